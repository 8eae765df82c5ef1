//! Object keys: a validated, `/`-separated relative path that no backend can be
//! steered outside its root or bucket prefix with.
//!
//! The rules are those of the coordination store's [`CasKey`] (no empty, `.` or
//! `..` segments, no leading `/`, no backslash or control characters, segments
//! starting with a dot reserved for the stores' own scratch files, at most 1,024
//! bytes as S3 allows), so that one key can name a CAS document and an object
//! alike. The type lives here because object keys flow through the backup code,
//! which must not confuse them with CAS keys.

use std::fmt;

use anchises_topology::cas::{validate_prefix, CasError, CasKey};

use super::StoreError;

/// A validated object key, relative to the store's root (or bucket prefix).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey(String);

impl ObjectKey {
    pub fn new(key: impl Into<String>) -> Result<Self, StoreError> {
        let key = key.into();
        CasKey::new(key.clone()).map_err(invalid)?;
        Ok(ObjectKey(key))
    }

    /// `self/path`, validated; `path` may hold several segments.
    pub fn join(&self, path: &str) -> Result<Self, StoreError> {
        ObjectKey::new(format!("{}/{path}", self.0))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The `/`-separated segments.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }
}

/// Checks a listing prefix: a plain string prefix, as S3 lists, that may end
/// inside a segment or with `/`; its complete segments follow the key rules.
/// The empty prefix lists everything.
pub fn check_prefix(prefix: &str) -> Result<(), StoreError> {
    validate_prefix(prefix).map_err(invalid)
}

fn invalid(error: CasError) -> StoreError {
    match error {
        CasError::InvalidKey { key, reason } => StoreError::InvalidKey { key, reason },
        other => StoreError::InvalidKey {
            key: other.to_string(),
            reason: "invalid key",
        },
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<&str> for ObjectKey {
    type Error = StoreError;

    fn try_from(key: &str) -> Result<Self, Self::Error> {
        ObjectKey::new(key)
    }
}

impl From<CasKey> for ObjectKey {
    fn from(key: CasKey) -> Self {
        ObjectKey(key.as_str().to_string())
    }
}

impl From<&ObjectKey> for CasKey {
    fn from(key: &ObjectKey) -> Self {
        CasKey::new(key.as_str()).expect("object keys follow the cas key rules")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_escape_the_root_are_rejected() {
        for bad in [
            "",
            "/etc/passwd",
            "a//b",
            "a/../b",
            "..",
            "a/./b",
            "a/",
            "a\\b",
            ".tmp/x",
            "a/\n",
        ] {
            assert!(
                matches!(ObjectKey::new(bad), Err(StoreError::InvalidKey { .. })),
                "{bad:?} was accepted"
            );
        }
        let long = "a".repeat(1025);
        assert!(
            ObjectKey::new(long).is_err(),
            "an over-long key was accepted"
        );
    }

    #[test]
    fn ordinary_keys_and_joins_are_accepted() {
        let key = ObjectKey::new("orders/nodes/dc1/0").unwrap();
        let joined = key.join("sst/ks/t-1/nb-1-big-Data.db").unwrap();
        assert_eq!(
            joined.as_str(),
            "orders/nodes/dc1/0/sst/ks/t-1/nb-1-big-Data.db"
        );
        assert_eq!(joined.segments().count(), 8);
        assert!(key.join("../escape").is_err());
    }

    #[test]
    fn prefixes_may_end_inside_a_segment() {
        for good in ["", "a", "a/", "a/b", "a/b/c-"] {
            assert!(check_prefix(good).is_ok(), "{good:?} was rejected");
        }
        for bad in ["/a", "a//", "../", "a/../"] {
            assert!(check_prefix(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
