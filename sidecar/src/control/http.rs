//! The control plane's HTTP API: `/v1/clusters` and its jobs. Errors and unknown
//! routes answer exactly as on the node API.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRef, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use utoipa::OpenApi;

use super::{ClusterSummary, ClusterView, ControlPlane, CreateCluster, Resize};
use crate::http::error::{ApiError, ErrorBody};
use crate::http::{jobs, meta, method_not_allowed, not_found};
use crate::jobs::{Job, Jobs};

#[derive(Clone, FromRef)]
struct ControlState {
    control: Arc<ControlPlane>,
    jobs: Jobs,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Anchises control plane API",
        description = "Creates and runs whole Cassandra clusters"
    ),
    paths(
        meta::health,
        list,
        create,
        show,
        delete,
        grow,
        shrink,
        jobs::list,
        jobs::show
    ),
    components(schemas(ErrorBody))
)]
struct ControlApiDoc;

pub fn router(control: Arc<ControlPlane>) -> Router {
    let state = ControlState {
        jobs: control.jobs.clone(),
        control,
    };
    Router::new()
        .route("/v1/health", get(meta::health))
        .route("/v1/clusters", get(list).post(create))
        .route("/v1/clusters/{name}", get(show).delete(delete))
        .route("/v1/clusters/{name}/grow", post(grow))
        .route("/v1/clusters/{name}/shrink", post(shrink))
        .route("/v1/jobs", get(jobs::list))
        .route("/v1/jobs/{id}", get(jobs::show))
        .route(
            "/v1/openapi.json",
            get(|| async { Json(ControlApiDoc::openapi()) }),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

fn accepted(location: String, body: serde_json::Value) -> Response {
    (
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(body),
    )
        .into_response()
}

/// Every cluster.
#[utoipa::path(get, path = "/v1/clusters", responses((status = 200, body = Vec<ClusterSummary>)))]
async fn list(
    State(control): State<Arc<ControlPlane>>,
) -> Result<Json<Vec<ClusterSummary>>, ApiError> {
    Ok(Json(control.list().await?))
}

/// Creates a cluster; the job ends when every node is NORMAL and serving CQL.
#[utoipa::path(post, path = "/v1/clusters", request_body = CreateCluster, responses(
    (status = 202, description = "the spec and the job; poll the Location"),
    (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create(
    State(control): State<Arc<ControlPlane>>,
    body: Result<Json<CreateCluster>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body?;
    let (spec, job) = control.create(req).await?;
    Ok(accepted(
        format!("/v1/jobs/{}", job.id),
        serde_json::json!({"cluster": spec, "job": job}),
    ))
}

/// A cluster: its spec, and every node's slot, tokens and state.
#[utoipa::path(get, path = "/v1/clusters/{name}", params(("name" = String, Path)), responses(
    (status = 200, body = ClusterView), (status = 404, body = ErrorBody)))]
async fn show(
    State(control): State<Arc<ControlPlane>>,
    Path(name): Path<String>,
) -> Result<Json<ClusterView>, ApiError> {
    Ok(Json(control.show(&name).await?))
}

/// Stops every node and forgets the cluster.
#[utoipa::path(delete, path = "/v1/clusters/{name}", params(("name" = String, Path)), responses(
    (status = 202, body = Job), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn delete(
    State(control): State<Arc<ControlPlane>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let job = control.delete(&name).await?;
    Ok(accepted(
        format!("/v1/jobs/{}", job.id),
        serde_json::to_value(job).expect("a job serializes"),
    ))
}

/// Grows every data center to `nodes`, one node at a time, then cleans up.
#[utoipa::path(post, path = "/v1/clusters/{name}/grow", params(("name" = String, Path)), request_body = Resize,
    responses((status = 202, body = Job), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn grow(
    State(control): State<Arc<ControlPlane>>,
    Path(name): Path<String>,
    body: Result<Json<Resize>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body?;
    let job = control.resize(&name, req, true).await?;
    Ok(accepted(
        format!("/v1/jobs/{}", job.id),
        serde_json::to_value(job).expect("a job serializes"),
    ))
}

/// Shrinks every data center to `nodes` by decommissioning the most recent slots,
/// one at a time; 409 when replication or disk space forbid it.
#[utoipa::path(post, path = "/v1/clusters/{name}/shrink", params(("name" = String, Path)), request_body = Resize,
    responses((status = 202, body = Job), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn shrink(
    State(control): State<Arc<ControlPlane>>,
    Path(name): Path<String>,
    body: Result<Json<Resize>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body?;
    let job = control.resize(&name, req, false).await?;
    Ok(accepted(
        format!("/v1/jobs/{}", job.id),
        serde_json::to_value(job).expect("a job serializes"),
    ))
}
