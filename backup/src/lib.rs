//! Files to and from the object store: snapshot and incremental upload, manifests,
//! restore download. Knows Cassandra's on-disk layout, never talks to Cassandra.
#![deny(unsafe_code)]

pub mod layout;
