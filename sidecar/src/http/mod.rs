//! The local HTTP API: one file per resource, errors mapped in `error.rs`, the
//! OpenAPI document generated from the handlers. Handlers validate and answer fast;
//! long work is started as a job (202 + `Location`).

mod backups;
pub mod error;
pub(crate) mod jobs;
pub(crate) mod meta;
mod node;
mod restores;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{FromRef, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use tower_http::trace::{DefaultOnFailure, TraceLayer};
use tracing::Level;
use utoipa::OpenApi;

use crate::backup::Backups;
use crate::jobs::Jobs;
use crate::metrics::{HttpLabels, Metrics};
use crate::node::Node;
use crate::restore::Restores;
use error::ApiError;

#[derive(Clone, FromRef)]
pub struct AppState {
    pub node: Arc<Node>,
    pub jobs: Jobs,
    pub metrics: Arc<Metrics>,
    pub backups: Arc<Backups>,
    pub restores: Arc<Restores>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Anchises sidecar API",
        description = "Runs one Apache Cassandra node"
    ),
    paths(
        meta::health,
        node::status,
        node::process,
        node::ring,
        node::schema,
        node::keyspaces,
        node::action,
        jobs::list,
        jobs::show,
        backups::create,
        backups::list,
        backups::show,
        backups::delete,
        backups::verify,
        backups::purge,
        restores::create,
        restores::list,
        restores::show,
        restores::cancel,
        restores::discard,
    ),
    components(schemas(error::ErrorBody))
)]
pub struct ApiDoc;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/health", get(meta::health))
        .route("/v1/node", get(node::status))
        .route("/v1/node/process", get(node::process))
        .route("/v1/node/ring", get(node::ring))
        .route("/v1/node/schema", get(node::schema))
        .route("/v1/node/keyspaces", get(node::keyspaces))
        .route("/v1/node/{action}", post(node::action))
        .route("/v1/backups", post(backups::create).get(backups::list))
        .route("/v1/backups/purge", post(backups::purge))
        .route(
            "/v1/backups/{id}",
            get(backups::show).delete(backups::delete),
        )
        .route("/v1/backups/{id}/verify", post(backups::verify))
        .route("/v1/restores", post(restores::create).get(restores::list))
        .route(
            "/v1/restores/{id}",
            get(restores::show).delete(restores::discard),
        )
        .route("/v1/restores/{id}/cancel", post(restores::cancel))
        .route("/v1/jobs", get(jobs::list))
        .route("/v1/jobs/{id}", get(jobs::show))
        .route("/v1/openapi.json", get(meta::openapi))
        .route("/metrics", get(meta::metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        // Errors are logged where they are handled (error.rs), not once more here:
        // a 503 while Cassandra starts is an answer, not a failure of the sidecar.
        .layer(TraceLayer::new_for_http().on_failure(DefaultOnFailure::new().level(Level::DEBUG)))
        .with_state(state)
}

pub(crate) async fn not_found(req: Request) -> ApiError {
    ApiError::not_found(format!(
        "no route for {} {}",
        req.method(),
        req.uri().path()
    ))
}

pub(crate) async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "method {} is not allowed on {}",
            req.method(),
            req.uri().path()
        ),
    )
}

async fn count_requests(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let response = next.run(req).await;
    state
        .metrics
        .http_seconds
        .observe(start.elapsed().as_secs_f64());
    state
        .metrics
        .http_requests
        .get_or_create(&HttpLabels {
            method,
            route,
            status: response.status().as_u16(),
        })
        .inc();
    response
}
