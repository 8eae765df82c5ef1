//! Cluster topology for Anchises: the pure logic of where Cassandra nodes sit on
//! the ring and the coordination primitives built on a compare-and-swap store.
//!
//! Token math (`tokens`), the single-token slot layout across racks and data
//! centers (`layout`), grow and shrink planning (`plan`), the compare-and-swap
//! store contract (`cas`) with its filesystem backend (`cas_fs`) and conformance
//! suite (`conformance`), the lease (`lease`) and the slot registry (`registry`).
//! This crate speaks no HTTP and knows no S3 SDK; backends for those live in the
//! crates above it and implement [`cas::CasStore`].
#![deny(unsafe_code)]

pub mod cas;
pub mod cas_cql;
pub mod cas_fs;
pub mod conformance;
pub mod layout;
pub mod lease;
pub mod lease_handle;
pub mod plan;
pub mod registry;
pub mod tokens;

pub use cas::{CasError, CasKey, CasStore, Version, Versioned};
pub use cas_fs::FsCasStore;
pub use layout::{DcLayout, DcSpec, LayoutError, RingLayout, SlotAssignment};
pub use lease::{Lease, LeaseConfig, LeaseError, LeaseRecord, Leases};
pub use lease_handle::{LeaseHandle, LeaseState};
pub use plan::{GrowPlan, PlanError, RingNode, ShrinkPlan};
pub use registry::{
    Claim, ClaimOutcome, NodeIdentity, PlannedSlot, Registry, RegistryError, Seed, SlotClaim,
    SlotState,
};
pub use tokens::{Partitioner, Token, TokenError, TokenMode, VnodeConfig};
