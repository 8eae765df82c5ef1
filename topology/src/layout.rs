//! Single-token slot layout of a whole cluster: for every data center, which rack
//! (availability zone) and which token each slot gets.
//!
//! The scheme is Priam's. Slots go round-robin over a DC's racks (rack i holds
//! slots i, i+R, i+2R, …), so walking the ring visits the racks in turn and any R
//! consecutive nodes — a replica set under NetworkTopologyStrategy with RF ≤ R —
//! sit in distinct racks. Slot s of n gets `min + ⌊s × ring_size / n⌋ + dc_offset`.
//! Each DC is its own evenly spaced ring, shifted by a small offset derived from its
//! name so that two DCs never claim the same token. Unlike Priam, whose
//! `abs(hash(region))` made two AWS regions collide unnoticed, collisions are
//! checked for here and reported with both DC names; an explicit offset resolves
//! them. This module computes; it never reads or writes the registry.

use serde::{Deserialize, Serialize};

use crate::tokens::{spaced_position, Partitioner, Token};

/// Offsets derived from names fall in 1..=MAX_DERIVED_OFFSET. Zero is avoided so
/// that no node ever holds the partitioner's minimum token, which Cassandra treats
/// as the ring's start marker (`Partitioner.getMinimumToken`) rather than a key
/// position.
pub const MAX_DERIVED_OFFSET: u64 = 4096;

/// Errors of building a layout.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("a cluster needs at least one data center")]
    NoDataCenters,
    #[error("data center {0:?} is listed twice")]
    DuplicateDataCenter(String),
    #[error("data center {dc:?} has no racks")]
    NoRacks { dc: String },
    #[error("data center {dc:?} lists rack {rack:?} twice")]
    DuplicateRack { dc: String, rack: String },
    #[error("data center {dc:?} has no nodes")]
    NoNodes { dc: String },
    #[error("data center {dc:?} has {nodes} nodes, not a multiple of its {racks} racks")]
    UnevenRacks {
        dc: String,
        nodes: u64,
        racks: usize,
    },
    #[error("offset {offset} of data center {dc:?} does not fit between its tokens")]
    OffsetTooLarge { dc: String, offset: u64 },
    #[error("data centers {first:?} and {second:?} both have token offset {offset}; give one an explicit offset")]
    OffsetCollision {
        first: String,
        second: String,
        offset: u64,
    },
    #[error(
        "data centers {first:?} and {second:?} both get token {token}; give one an explicit offset"
    )]
    TokenCollision {
        first: String,
        second: String,
        token: String,
    },
}

/// What the operator says about one data center.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DcSpec {
    pub name: String,
    /// Rack (availability zone) names, in slot order: rack i holds slots i, i+R, …
    pub racks: Vec<String>,
    /// Nodes in the DC, a multiple of the number of racks.
    pub nodes: u64,
    /// Overrides the offset derived from the name, to resolve a collision or to
    /// reproduce an existing cluster's tokens.
    #[serde(default)]
    pub offset: Option<u64>,
}

/// One slot of a data center.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotAssignment {
    pub slot: u64,
    /// Index into the DC's `racks`.
    pub rack: usize,
    pub token: Token,
}

/// The computed layout of one data center; `slots[i].slot == i`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DcLayout {
    pub name: String,
    pub racks: Vec<String>,
    pub offset: u64,
    pub slots: Vec<SlotAssignment>,
}

impl DcLayout {
    pub fn slot(&self, slot: u64) -> Option<&SlotAssignment> {
        usize::try_from(slot).ok().and_then(|i| self.slots.get(i))
    }

    pub fn rack_name(&self, slot: &SlotAssignment) -> &str {
        &self.racks[slot.rack]
    }
}

/// The computed single-token layout of a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingLayout {
    pub partitioner: Partitioner,
    pub dcs: Vec<DcLayout>,
}

impl RingLayout {
    /// Computes every DC's slots and checks that no two DCs share an offset or a
    /// token. Needs every DC of the cluster: collisions are only visible together.
    pub fn new(partitioner: Partitioner, specs: &[DcSpec]) -> Result<Self, LayoutError> {
        if specs.is_empty() {
            return Err(LayoutError::NoDataCenters);
        }
        let mut dcs: Vec<DcLayout> = Vec::with_capacity(specs.len());
        for spec in specs {
            if dcs.iter().any(|dc| dc.name == spec.name) {
                return Err(LayoutError::DuplicateDataCenter(spec.name.clone()));
            }
            let dc = dc_layout(partitioner, spec)?;
            if let Some(other) = dcs.iter().find(|other| other.offset == dc.offset) {
                return Err(LayoutError::OffsetCollision {
                    first: other.name.clone(),
                    second: dc.name,
                    offset: dc.offset,
                });
            }
            dcs.push(dc);
        }
        check_tokens_unique(&dcs)?;
        Ok(RingLayout { partitioner, dcs })
    }

    pub fn dc(&self, name: &str) -> Option<&DcLayout> {
        self.dcs.iter().find(|dc| dc.name == name)
    }

    /// The slot of one DC, if the layout has it.
    pub fn slot(&self, dc: &str, slot: u64) -> Option<&SlotAssignment> {
        self.dc(dc)?.slot(slot)
    }
}

/// The token offset of a DC derived from its name: FNV-1a, which is stable across
/// Rust versions and platforms (std's hasher is not), folded into
/// 1..=MAX_DERIVED_OFFSET.
pub fn derived_dc_offset(dc: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in dc.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    1 + hash % MAX_DERIVED_OFFSET
}

fn dc_layout(partitioner: Partitioner, spec: &DcSpec) -> Result<DcLayout, LayoutError> {
    let racks = spec.racks.len();
    if racks == 0 {
        return Err(LayoutError::NoRacks {
            dc: spec.name.clone(),
        });
    }
    for (i, rack) in spec.racks.iter().enumerate() {
        if spec.racks[..i].contains(rack) {
            return Err(LayoutError::DuplicateRack {
                dc: spec.name.clone(),
                rack: rack.clone(),
            });
        }
    }
    if spec.nodes == 0 {
        return Err(LayoutError::NoNodes {
            dc: spec.name.clone(),
        });
    }
    // Uneven racks would put two nodes of one rack next to each other where the
    // ring wraps, and a replica set there would lose rack diversity. Priam has the
    // same rule (equal auto-scaling groups per zone).
    if !spec.nodes.is_multiple_of(racks as u64) {
        return Err(LayoutError::UnevenRacks {
            dc: spec.name.clone(),
            nodes: spec.nodes,
            racks,
        });
    }
    let offset = spec.offset.unwrap_or_else(|| derived_dc_offset(&spec.name));
    // The offset must stay below the smallest gap between two slots, or tokens of
    // this DC would leapfrog each other (and the last one pass the maximum token).
    let smallest_gap = partitioner.ring_size() / u128::from(spec.nodes);
    if u128::from(offset) >= smallest_gap {
        return Err(LayoutError::OffsetTooLarge {
            dc: spec.name.clone(),
            offset,
        });
    }
    let slots = (0..spec.nodes)
        .map(|slot| {
            let position = spaced_position(partitioner, slot, spec.nodes) + u128::from(offset);
            SlotAssignment {
                slot,
                rack: (slot % racks as u64) as usize,
                token: partitioner
                    .token_at(position)
                    .expect("offset below the gap keeps tokens inside the ring"),
            }
        })
        .collect();
    Ok(DcLayout {
        name: spec.name.clone(),
        racks: spec.racks.clone(),
        offset,
        slots,
    })
}

/// Distinct offsets do not guarantee distinct tokens when DCs have different
/// sizes (slot 1 of 3 and slot 2 of 6 differ by one token before the offsets are
/// added), so every token is checked: one sort, O(n log n).
fn check_tokens_unique(dcs: &[DcLayout]) -> Result<(), LayoutError> {
    if dcs.len() < 2 {
        return Ok(());
    }
    let mut all: Vec<(Token, usize)> = dcs
        .iter()
        .enumerate()
        .flat_map(|(i, dc)| dc.slots.iter().map(move |s| (s.token, i)))
        .collect();
    all.sort_unstable();
    for pair in all.windows(2) {
        let ((a, dc_a), (b, dc_b)) = (pair[0], pair[1]);
        if a == b {
            let (first, second) = (dc_a.min(dc_b), dc_a.max(dc_b));
            return Err(LayoutError::TokenCollision {
                first: dcs[first].name.clone(),
                second: dcs[second].name.clone(),
                token: a.to_string(),
            });
        }
    }
    Ok(())
}
