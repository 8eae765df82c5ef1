//! The object store's error type. It has a variant only where a caller branches:
//! the object is missing, a conditional write lost, the key is invalid, the work
//! was cancelled — and, for everything else, whether trying again can help.
//!
//! The backends decide which of `Transient` and `Permanent` an error is (5xx,
//! throttling, timeouts and broken connections are transient); the retry layer
//! only asks [`StoreError::is_retryable`]. Call sites never classify.

/// A boxed underlying error (SDK, I/O), kept for `source()` chains and logs.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("object {key} not found")]
    NotFound { key: String },
    /// A conditional write or delete lost: `If-None-Match: *` met an existing
    /// object, or `If-Match` met another etag.
    #[error("precondition failed on {key}")]
    PreconditionFailed { key: String },
    #[error("invalid object key {key:?}: {reason}")]
    InvalidKey { key: String, reason: &'static str },
    /// Worth trying again: a server error, throttling, a timeout, a broken
    /// connection. Returned to the caller once the retry budget is spent.
    #[error("{op} {key}: {detail}")]
    Transient {
        op: &'static str,
        key: String,
        detail: String,
        #[source]
        source: Option<BoxError>,
    },
    /// Trying again will not help: a missing bucket, denied access, a bad
    /// request, a local disk error.
    #[error("{op} {key}: {detail}")]
    Permanent {
        op: &'static str,
        key: String,
        detail: String,
        #[source]
        source: Option<BoxError>,
    },
    /// The store's cancellation token fired while the operation waited or ran.
    #[error("{op} {key}: cancelled")]
    Cancelled { op: &'static str, key: String },
}

impl StoreError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Transient { .. })
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::NotFound { .. })
    }

    pub fn is_precondition_failed(&self) -> bool {
        matches!(self, StoreError::PreconditionFailed { .. })
    }

    pub(crate) fn permanent(op: &'static str, key: &str, detail: impl Into<String>) -> Self {
        StoreError::Permanent {
            op,
            key: key.to_string(),
            detail: detail.into(),
            source: None,
        }
    }

    /// A local I/O error; `NotFound` becomes [`StoreError::NotFound`]. Disk
    /// errors are permanent: a full or read-only disk does not heal in the few
    /// seconds a retry waits.
    pub(crate) fn io(op: &'static str, key: &str, error: std::io::Error) -> Self {
        if error.kind() == std::io::ErrorKind::NotFound {
            return StoreError::NotFound {
                key: key.to_string(),
            };
        }
        StoreError::Permanent {
            op,
            key: key.to_string(),
            detail: error.to_string(),
            source: Some(Box::new(error)),
        }
    }
}
