//! Files to and from the object store: snapshot and incremental upload, manifests,
//! restore download, and the object store they all go through (`store`). Knows
//! Cassandra's on-disk layout, never talks to Cassandra.
#![deny(unsafe_code)]

pub mod catalog;
pub mod direct;
pub mod error;
pub mod files;
pub mod index;
pub mod layout;
pub mod manifest;
pub mod node;
pub mod restore;
pub mod retention;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
pub mod upload;

pub use error::BackupError;
pub use store::{ObjectKey, ObjectStore, StoreConfig, StoreError};
