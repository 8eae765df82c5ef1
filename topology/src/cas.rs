//! The compare-and-swap store that all coordination (leases, the slot registry,
//! plans) is written against, its validated key type and its errors.
//!
//! The trait is deliberately small — get, create-if-absent, replace-if-version,
//! delete-if-version, list — because every backend must implement it atomically:
//! S3 conditional writes (`If-None-Match: *`, `If-Match: <etag>`), a Cassandra
//! LWT, a local filesystem. Methods return boxed futures so that the trait stays
//! dyn-compatible: the sidecar picks the backend at run time and holds an
//! `Arc<dyn CasStore>`. This module defines the contract; it holds no state and
//! performs no I/O itself.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The future every store method returns.
pub type CasFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, CasError>> + Send + 'a>>;

/// Errors of a compare-and-swap store.
#[derive(Debug, thiserror::Error)]
pub enum CasError {
    /// The precondition failed: the key exists (create), or its version is not
    /// the expected one or it is gone (replace, delete). Callers re-read and decide.
    #[error("compare-and-swap conflict on {key}")]
    Conflict { key: String },
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey { key: String, reason: &'static str },
    /// A stored object could not be decoded.
    #[error("corrupt object at {key}: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("i/o error on {key}")]
    Io {
        key: String,
        #[source]
        source: std::io::Error,
    },
    /// Any other failure of a backend (network, throttling, driver).
    #[error("store backend error: {message}")]
    Backend {
        message: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

impl CasError {
    pub fn is_conflict(&self) -> bool {
        matches!(self, CasError::Conflict { .. })
    }
}

/// A validated store key: `/`-separated, relative, no empty, `.` or `..`
/// segments, so that no backend can be steered outside its root. Segments that
/// start with a dot are reserved for the stores' own bookkeeping (temp files,
/// locks).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CasKey(String);

/// S3's limit on key length, the tightest of the backends.
const MAX_KEY_BYTES: usize = 1024;

impl CasKey {
    pub fn new(key: impl Into<String>) -> Result<Self, CasError> {
        let key = key.into();
        let invalid = |reason| CasError::InvalidKey {
            key: key.clone(),
            reason,
        };
        if key.is_empty() {
            return Err(invalid("empty key"));
        }
        if key.len() > MAX_KEY_BYTES {
            return Err(invalid("longer than 1024 bytes"));
        }
        if key.starts_with('/') {
            return Err(invalid("absolute path"));
        }
        for segment in key.split('/') {
            check_segment(segment).map_err(invalid)?;
        }
        Ok(CasKey(key))
    }

    /// `self/segment`, validated.
    pub fn join(&self, segment: &str) -> Result<Self, CasError> {
        CasKey::new(format!("{}/{segment}", self.0))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The `/`-separated segments.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }
}

fn check_segment(segment: &str) -> Result<(), &'static str> {
    match segment {
        "" => Err("empty segment"),
        "." | ".." => Err("relative segment"),
        s if s.starts_with('.') => Err("segment starts with a dot"),
        s if s.chars().any(|c| c == '\\' || c.is_control()) => {
            Err("backslash or control character")
        }
        _ => Ok(()),
    }
}

/// Checks a `list` prefix: a key prefix that may end inside a segment or with
/// `/`, with the same rules for its complete segments. The empty prefix lists
/// everything.
pub fn validate_prefix(prefix: &str) -> Result<(), CasError> {
    if prefix.is_empty() {
        return Ok(());
    }
    let invalid = |reason| CasError::InvalidKey {
        key: prefix.to_string(),
        reason,
    };
    if prefix.starts_with('/') {
        return Err(invalid("absolute path"));
    }
    let (complete, partial) = match prefix.rsplit_once('/') {
        Some((complete, partial)) => (Some(complete), partial),
        None => (None, prefix),
    };
    for segment in complete.into_iter().flat_map(|c| c.split('/')) {
        check_segment(segment).map_err(invalid)?;
    }
    if !partial.is_empty() {
        check_segment(partial).map_err(invalid)?;
    }
    Ok(())
}

impl fmt::Display for CasKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<&str> for CasKey {
    type Error = CasError;

    fn try_from(key: &str) -> Result<Self, Self::Error> {
        CasKey::new(key)
    }
}

/// An opaque version of a stored value: an S3 etag, a file generation, an LWT
/// column. It changes on every write, so holding one proves what you last read.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Version(String);

impl Version {
    pub fn new(version: impl Into<String>) -> Self {
        Version(version.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A stored value with the version it was read at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub value: Vec<u8>,
    pub version: Version,
}

/// A store with atomic conditional writes. Every method is atomic on its own;
/// there are no transactions across keys.
pub trait CasStore: Send + Sync + fmt::Debug {
    /// The value and its version, or `None` if the key does not exist.
    fn get<'a>(&'a self, key: &'a CasKey) -> CasFuture<'a, Option<Versioned>>;

    /// Creates the key; `Conflict` if it exists.
    fn put_if_absent<'a>(&'a self, key: &'a CasKey, value: Vec<u8>) -> CasFuture<'a, Version>;

    /// Replaces the value if the key is at `expected`; `Conflict` if it is at
    /// another version or does not exist.
    fn put_if_match<'a>(
        &'a self,
        key: &'a CasKey,
        value: Vec<u8>,
        expected: &'a Version,
    ) -> CasFuture<'a, Version>;

    /// Deletes the key if it is at `expected`; `Conflict` otherwise.
    fn delete_if_match<'a>(&'a self, key: &'a CasKey, expected: &'a Version) -> CasFuture<'a, ()>;

    /// Keys that start with `prefix` (plain string prefix, as S3 lists), sorted.
    fn list<'a>(&'a self, prefix: &'a str) -> CasFuture<'a, Vec<CasKey>>;
}

impl<S: CasStore + ?Sized> CasStore for Arc<S> {
    fn get<'a>(&'a self, key: &'a CasKey) -> CasFuture<'a, Option<Versioned>> {
        (**self).get(key)
    }

    fn put_if_absent<'a>(&'a self, key: &'a CasKey, value: Vec<u8>) -> CasFuture<'a, Version> {
        (**self).put_if_absent(key, value)
    }

    fn put_if_match<'a>(
        &'a self,
        key: &'a CasKey,
        value: Vec<u8>,
        expected: &'a Version,
    ) -> CasFuture<'a, Version> {
        (**self).put_if_match(key, value, expected)
    }

    fn delete_if_match<'a>(&'a self, key: &'a CasKey, expected: &'a Version) -> CasFuture<'a, ()> {
        (**self).delete_if_match(key, expected)
    }

    fn list<'a>(&'a self, prefix: &'a str) -> CasFuture<'a, Vec<CasKey>> {
        (**self).list(prefix)
    }
}

/// Reads and decodes a JSON document.
pub async fn get_json<T: DeserializeOwned>(
    store: &(impl CasStore + ?Sized),
    key: &CasKey,
) -> Result<Option<(T, Version)>, CasError> {
    let Some(found) = store.get(key).await? else {
        return Ok(None);
    };
    let value = serde_json::from_slice(&found.value).map_err(|e| CasError::Corrupt {
        key: key.to_string(),
        reason: e.to_string(),
    })?;
    Ok(Some((value, found.version)))
}

/// Encodes a document as pretty JSON: these files are read by people during
/// incidents, and they are small.
pub fn to_json_bytes<T: Serialize>(value: &T) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(value).expect("plain data serializes");
    bytes.push(b'\n');
    bytes
}

/// The first line of a stored value in the stores that keep a version (filesystem)
/// or a nonce (S3, whose ETag would otherwise repeat for an equal value) inside the
/// object: `anchises-cas 1 <tag>\n`, then the value.
pub fn value_header(tag: &str) -> String {
    format!("{VALUE_HEADER}{tag}\n")
}

const VALUE_HEADER: &str = "anchises-cas 1 ";

/// Splits a stored object into the tag of its [`value_header`] and the value;
/// `Corrupt` when the object does not start with a well-formed header.
pub fn split_value_header<'a>(
    key: &CasKey,
    body: &'a [u8],
) -> Result<(&'a str, &'a [u8]), CasError> {
    let corrupt = || CasError::Corrupt {
        key: key.to_string(),
        reason: "missing or malformed compare-and-swap header".to_string(),
    };
    let rest = body
        .strip_prefix(VALUE_HEADER.as_bytes())
        .ok_or_else(corrupt)?;
    let newline = rest.iter().position(|&b| b == b'\n').ok_or_else(corrupt)?;
    let tag = std::str::from_utf8(&rest[..newline])
        .ok()
        .filter(|t| !t.is_empty())
        .ok_or_else(corrupt)?;
    Ok((tag, &rest[newline + 1..]))
}
