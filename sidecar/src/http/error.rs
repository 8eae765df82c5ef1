//! Every mapping of an error to an HTTP status lives here. Bodies are always
//! `{"error": "…"}`; internal errors get a generic message and are logged in full.

use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::cassandra::jolokia::JolokiaError;
use crate::cassandra::supervisor::SupervisorError;
use crate::jobs::Conflict;
use crate::node::NodeError;

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error; see the sidecar log",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ErrorBody {
                error: self.message,
            }),
        )
            .into_response()
    }
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        match e {
            NodeError::Unavailable(m) => Self::new(StatusCode::SERVICE_UNAVAILABLE, m),
            NodeError::BadRequest(m) => Self::bad_request(m),
            NodeError::NotFound(m) => Self::not_found(m),
            NodeError::Supervisor(
                e @ (SupervisorError::AlreadyRunning | SupervisorError::NotRunning),
            ) => Self::new(StatusCode::CONFLICT, e.to_string()),
            NodeError::Refused(m) => Self::new(StatusCode::CONFLICT, m),
            NodeError::Jolokia(
                e @ (JolokiaError::Unreachable { .. } | JolokiaError::Timeout(_)),
            ) => Self::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            NodeError::Jolokia(e @ JolokiaError::Remote { .. }) => {
                Self::new(StatusCode::BAD_GATEWAY, format!("cassandra refused: {e}"))
            }
            NodeError::Cql(e) => Self::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            other => Self::internal(other),
        }
    }
}

impl From<Conflict> for ApiError {
    fn from(e: Conflict) -> Self {
        Self::new(StatusCode::CONFLICT, e.to_string())
    }
}

/// Malformed JSON and JSON of the wrong shape are both a bad request (axum would
/// say 422 for the second); only a missing content type keeps its 415.
impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        let status = match e {
            JsonRejection::MissingJsonContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            _ => StatusCode::BAD_REQUEST,
        };
        Self::new(status, format!("bad request body: {}", e.body_text()))
    }
}
