//! Cluster topology: token math, slot layout, coordination.
#![deny(unsafe_code)]
