//! `/v1/node…`: the local node's status, process, ring and schema, and the actions
//! on it. Actions run as jobs in one exclusive group: one at a time.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::error::{ApiError, ErrorBody};
use super::AppState;
use crate::cassandra::cql::{KeyspaceReplication, SchemaElement};
use crate::cassandra::supervisor::ProcessStatus;
use crate::jobs::Job;
use crate::node::{ActionBody, NodeAction, NodeStatus, Ring};

/// The node as Cassandra reports it. 503 while Cassandra is down or starting.
#[utoipa::path(get, path = "/v1/node", responses(
    (status = 200, body = NodeStatus), (status = 503, body = ErrorBody)))]
pub async fn status(State(state): State<AppState>) -> Result<Json<NodeStatus>, ApiError> {
    Ok(Json(state.node.status().await?))
}

/// The Cassandra process as the supervisor sees it; answers whatever the state.
#[utoipa::path(get, path = "/v1/node/process", responses((status = 200, body = ProcessStatus)))]
pub async fn process(State(state): State<AppState>) -> Json<ProcessStatus> {
    Json(state.node.supervisor.status())
}

/// Tokens to endpoints, and each endpoint's state, load and ownership.
#[utoipa::path(get, path = "/v1/node/ring", responses(
    (status = 200, body = Ring), (status = 503, body = ErrorBody)))]
pub async fn ring(State(state): State<AppState>) -> Result<Json<Ring>, ApiError> {
    Ok(Json(state.node.ring().await?))
}

/// The schema (server-side `DESCRIBE SCHEMA` over CQL).
#[utoipa::path(get, path = "/v1/node/schema", responses(
    (status = 200, body = Vec<SchemaElement>), (status = 503, body = ErrorBody)))]
pub async fn schema(State(state): State<AppState>) -> Result<Json<Vec<SchemaElement>>, ApiError> {
    Ok(Json(state.node.schema().await?))
}

/// Keyspaces and their replication settings.
#[utoipa::path(get, path = "/v1/node/keyspaces", responses(
    (status = 200, body = Vec<KeyspaceReplication>), (status = 503, body = ErrorBody)))]
pub async fn keyspaces(
    State(state): State<AppState>,
) -> Result<Json<Vec<KeyspaceReplication>>, ApiError> {
    Ok(Json(state.node.keyspaces().await?))
}

/// Starts an action on the node: start, stop (drains first), restart, drain,
/// flush (body `{"keyspace": "ks", "tables": ["t"]}`, all keyspaces without one),
/// cleanup, or decommission (leave the ring, then stop).
#[utoipa::path(post, path = "/v1/node/{action}",
    params(("action" = NodeAction, Path, description = "start, stop, restart, drain, flush, cleanup or decommission")),
    request_body(content = Option<ActionBody>, description = "for flush and decommission"),
    responses(
        (status = 202, body = Job, description = "started; poll the Location"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn action(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let action = NodeAction::parse(&name).ok_or_else(|| {
        let names: Vec<&str> = NodeAction::ALL.iter().map(|a| a.name()).collect();
        ApiError::not_found(format!(
            "unknown node action {name:?} (one of: {})",
            names.join(", ")
        ))
    })?;
    let body: ActionBody = if body.iter().all(u8::is_ascii_whitespace) {
        ActionBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("bad request body: {e}")))?
    };
    if action != NodeAction::Flush && (body.keyspace.is_some() || !body.tables.is_empty()) {
        return Err(ApiError::bad_request(format!(
            "{} takes no keyspace or tables",
            action.name()
        )));
    }
    if action != NodeAction::Decommission && body.force {
        return Err(ApiError::bad_request(format!(
            "{} takes no force",
            action.name()
        )));
    }
    state.node.precheck(action)?;
    if action == NodeAction::Flush {
        state.node.precheck_flush(&body).await?;
    }
    let node = state.node.clone();
    let job = state.jobs.start(
        "node",
        &format!("node.{}", action.name()),
        move |cancel| async move {
            node.run_action(action, body, cancel)
                .await
                .map_err(|e| e.to_string())
        },
    )?;
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, format!("/v1/jobs/{}", job.id))],
        Json(job),
    )
        .into_response())
}
