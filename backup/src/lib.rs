//! Files to and from the object store: snapshot and incremental upload, manifests,
//! restore download, and the object store they all go through (`store`). Knows
//! Cassandra's on-disk layout, never talks to Cassandra.
#![deny(unsafe_code)]

pub mod layout;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;

pub use store::{ObjectKey, ObjectStore, StoreConfig, StoreError};
