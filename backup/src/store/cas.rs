//! The compare-and-swap store on S3 conditional writes, for leases, the slot
//! registry and plans: create is PutObject with `If-None-Match: *`, replace is
//! PutObject with `If-Match: <etag>`, delete is DeleteObject with `If-Match`,
//! and the version is the object's etag.
//!
//! Two S3 facts shape the details. An etag is the MD5 of the body, so writing
//! the same value twice would repeat a version and let a stale holder win (the
//! ABA case); every body therefore starts with a header line carrying a random
//! nonce, `anchises-cas 1 <nonce>\n`, and the value follows. And a retried
//! conditional write is ambiguous: if the first attempt took effect but its
//! answer was lost, the retry meets its own write and fails the precondition.
//! After such a retry the object is read back, and if it carries our nonce the
//! write is ours. A delete retried after an ambiguous attempt that then finds
//! the object gone is reported as done, for the same reason.
//!
//! S3 answers a lost race with 412 PreconditionFailed, or 409
//! ConditionalRequestConflict while a concurrent conditional write is in
//! flight; both are [`CasError::Conflict`]. `If-Match` on a missing object is a
//! 404, also a conflict.

use std::sync::atomic::{AtomicUsize, Ordering};

use anchises_topology::cas::{
    split_value_header, validate_prefix, value_header, CasError, CasFuture, CasKey, CasStore,
    Version, Versioned,
};
use bytes::{BufMut, Bytes, BytesMut};

use super::{ObjectKey, ObjectStore, StoreError};

/// [`CasStore`] over an S3 [`ObjectStore`], sharing its bucket prefix, retry
/// policy and cancellation.
#[derive(Debug, Clone)]
pub struct S3CasStore {
    store: ObjectStore,
}

impl S3CasStore {
    /// Fails unless `store` is an S3 store: the filesystem has
    /// `anchises_topology::FsCasStore`.
    pub fn new(store: ObjectStore) -> Result<Self, StoreError> {
        if !store.is_s3() {
            return Err(StoreError::permanent(
                "open",
                "",
                "the s3 compare-and-swap store needs an s3 object store",
            ));
        }
        Ok(S3CasStore { store })
    }

    async fn read(&self, key: &CasKey) -> Result<Option<(Vec<u8>, String, Version)>, CasError> {
        let s3 = self.store.s3_backend().expect("checked in new");
        let object = ObjectKey::from(key.clone());
        let found = self
            .store
            .attempts()
            .run("cas get", key.as_str(), || s3.get(&object))
            .await;
        let (body, etag) = match found {
            Ok(found) => found,
            Err(StoreError::NotFound { .. }) => return Ok(None),
            Err(error) => return Err(to_cas(key, error)),
        };
        let (nonce, value) = decode(key, &body)?;
        Ok(Some((value, nonce, Version::new(etag))))
    }

    async fn write(
        &self,
        key: &CasKey,
        value: Vec<u8>,
        expected: Option<&Version>,
    ) -> Result<Version, CasError> {
        let s3 = self.store.s3_backend().expect("checked in new");
        let object = ObjectKey::from(key.clone());
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        let body = encode(&nonce, &value);
        let tries = AtomicUsize::new(0);
        let result = self
            .store
            .attempts()
            .run("cas put", key.as_str(), || {
                tries.fetch_add(1, Ordering::SeqCst);
                s3.put_conditional(&object, body.clone(), expected.map(Version::as_str))
            })
            .await;
        match result {
            Ok(etag) => Ok(Version::new(etag)),
            Err(StoreError::PreconditionFailed { .. } | StoreError::NotFound { .. }) => {
                // Only a retry can have met its own earlier write.
                if tries.load(Ordering::SeqCst) > 1 {
                    if let Some((_, stored_nonce, version)) = self.read(key).await? {
                        if stored_nonce == nonce {
                            return Ok(version);
                        }
                    }
                }
                Err(conflict(key))
            }
            Err(error) => Err(to_cas(key, error)),
        }
    }

    async fn delete(&self, key: &CasKey, expected: &Version) -> Result<(), CasError> {
        let s3 = self.store.s3_backend().expect("checked in new");
        let object = ObjectKey::from(key.clone());
        let tries = AtomicUsize::new(0);
        let result = self
            .store
            .attempts()
            .run("cas delete", key.as_str(), || {
                tries.fetch_add(1, Ordering::SeqCst);
                s3.delete(&object, Some(expected.as_str()))
            })
            .await;
        match result {
            Ok(()) => Ok(()),
            // Gone after an ambiguous attempt: that attempt deleted it.
            Err(StoreError::NotFound { .. }) if tries.load(Ordering::SeqCst) > 1 => Ok(()),
            Err(StoreError::PreconditionFailed { .. } | StoreError::NotFound { .. }) => {
                Err(conflict(key))
            }
            Err(error) => Err(to_cas(key, error)),
        }
    }

    async fn list_keys(&self, prefix: &str) -> Result<Vec<CasKey>, CasError> {
        validate_prefix(prefix)?;
        let objects = self
            .store
            .list(prefix)
            .await
            .map_err(|e| to_cas(&CasKey::new("list").expect("valid"), e))?;
        let mut keys = objects
            .into_iter()
            .map(|o| CasKey::from(&o.key))
            .collect::<Vec<_>>();
        keys.sort();
        Ok(keys)
    }
}

fn encode(nonce: &str, value: &[u8]) -> Bytes {
    let header = value_header(nonce);
    let mut body = BytesMut::with_capacity(header.len() + value.len());
    body.put_slice(header.as_bytes());
    body.put_slice(value);
    body.freeze()
}

fn decode(key: &CasKey, body: &[u8]) -> Result<(String, Vec<u8>), CasError> {
    let (nonce, value) = split_value_header(key, body)?;
    Ok((nonce.to_string(), value.to_vec()))
}

fn conflict(key: &CasKey) -> CasError {
    CasError::Conflict {
        key: key.to_string(),
    }
}

fn to_cas(key: &CasKey, error: StoreError) -> CasError {
    match error {
        StoreError::InvalidKey { key, reason } => CasError::InvalidKey { key, reason },
        StoreError::PreconditionFailed { .. } => conflict(key),
        other => CasError::Backend {
            message: other.to_string(),
            source: Some(Box::new(other)),
        },
    }
}

impl CasStore for S3CasStore {
    fn get<'a>(&'a self, key: &'a CasKey) -> CasFuture<'a, Option<Versioned>> {
        Box::pin(async move {
            Ok(self
                .read(key)
                .await?
                .map(|(value, _, version)| Versioned { value, version }))
        })
    }

    fn put_if_absent<'a>(&'a self, key: &'a CasKey, value: Vec<u8>) -> CasFuture<'a, Version> {
        Box::pin(self.write(key, value, None))
    }

    fn put_if_match<'a>(
        &'a self,
        key: &'a CasKey,
        value: Vec<u8>,
        expected: &'a Version,
    ) -> CasFuture<'a, Version> {
        Box::pin(self.write(key, value, Some(expected)))
    }

    fn delete_if_match<'a>(&'a self, key: &'a CasKey, expected: &'a Version) -> CasFuture<'a, ()> {
        Box::pin(self.delete(key, expected))
    }

    fn list<'a>(&'a self, prefix: &'a str) -> CasFuture<'a, Vec<CasKey>> {
        Box::pin(self.list_keys(prefix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_round_trips_and_a_foreign_object_is_corrupt() {
        let key = CasKey::new("a/b").unwrap();
        let body = encode("n0nce", b"value\nwith newline");
        assert_eq!(
            decode(&key, &body).unwrap(),
            ("n0nce".to_string(), b"value\nwith newline".to_vec())
        );
        assert!(matches!(decode(&key, b"{}"), Err(CasError::Corrupt { .. })));
        assert!(matches!(
            decode(&key, b"anchises-cas 1 "),
            Err(CasError::Corrupt { .. })
        ));
    }
}
