//! Errors of backup and restore work, for callers that report them to users:
//! which file, which object, and whether the store or the disk failed.

use std::path::PathBuf;

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// A local file could not be read (it vanished, changed or is unreadable).
    #[error("{}: {source}", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Something stored is not what it should be (a manifest that does not
    /// decode, an entry with a bad key).
    #[error("{0}")]
    Corrupt(String),
    /// The request cannot be carried out as asked.
    #[error("{0}")]
    Invalid(String),
    #[error("cancelled")]
    Cancelled,
    #[error("internal error: {0}")]
    Internal(String),
}

impl BackupError {
    /// Worth trying the same file again (the store failed transiently).
    pub fn is_retryable(&self) -> bool {
        matches!(self, BackupError::Store(e) if e.is_retryable())
    }
}
