//! Grow and shrink planning for a single-token data center: where new nodes go,
//! which nodes leave, and how unbalanced the ring is afterwards.
//!
//! Existing nodes never move (a move streams data twice and slots are the
//! identity that backups hang off), so growing inserts tokens into the existing
//! ranges. Doubling splits every range at its midpoint, which keeps a balanced
//! ring balanced; any other size hands the extra nodes out to the largest ranges
//! first, splitting a range into equal parts when it gets several. Shrinking
//! removes the most recently added slots first, which undoes the last grow.
//! Plans are pure values: executing them (one node at a time, under the lease)
//! is the sidecar's job.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};

use crate::tokens::{Partitioner, Token};

/// Errors of grow and shrink planning.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("the ring has no nodes")]
    EmptyRing,
    #[error("a grow needs more than the {current} nodes the ring has, got {target}")]
    NotAGrow { current: usize, target: usize },
    #[error("a shrink needs between 1 and the {current} nodes the ring has, got {target}")]
    NotAShrink { current: usize, target: usize },
    #[error("token {0} is held by two nodes")]
    DuplicateToken(String),
    #[error("token {token} does not belong to the {partitioner} partitioner")]
    WrongPartitioner {
        token: String,
        partitioner: Partitioner,
    },
    #[error("node of slot {slot} names rack {rack}, but the data center has {racks} racks")]
    UnknownRack {
        slot: u64,
        rack: usize,
        racks: usize,
    },
}

/// One node of a data center's ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingNode {
    pub slot: u64,
    /// Index into the data center's racks.
    pub rack: usize,
    pub token: Token,
}

/// The nodes to add to reach the target size, in ring order.
#[derive(Debug, Clone, PartialEq)]
pub struct GrowPlan {
    /// New slots are numbered after the highest existing slot.
    pub new_nodes: Vec<RingNode>,
    /// Largest range over the ideal range (ring size / nodes) after the grow; 1.0
    /// is perfectly balanced.
    pub imbalance: f64,
    /// Ring neighbours in the same rack after the grow. Nonzero only when the
    /// rack count makes alternation impossible (doubling a two-rack ring), and
    /// then replica sets of those neighbours share a rack.
    pub adjacent_same_rack: usize,
}

/// The nodes to decommission to reach the target size, most recent slot first.
#[derive(Debug, Clone, PartialEq)]
pub struct ShrinkPlan {
    pub remove: Vec<RingNode>,
    /// Largest range over the ideal range after the shrink.
    pub imbalance: f64,
    pub adjacent_same_rack: usize,
}

/// Largest range over the ideal range of a ring of `tokens` (any order).
pub fn imbalance(partitioner: Partitioner, tokens: &[Token]) -> f64 {
    if tokens.len() < 2 {
        return 1.0;
    }
    let mut sorted = tokens.to_vec();
    sorted.sort_unstable();
    let largest = ranges(partitioner, &sorted).max().unwrap_or(0);
    largest as f64 * tokens.len() as f64 / partitioner.ring_size() as f64
}

/// Plans the nodes that grow `ring` to `target` nodes over `racks` racks.
pub fn plan_grow(
    partitioner: Partitioner,
    ring: &[RingNode],
    racks: usize,
    target: usize,
) -> Result<GrowPlan, PlanError> {
    let sorted = validated(partitioner, ring, racks)?;
    if target <= sorted.len() {
        return Err(PlanError::NotAGrow {
            current: sorted.len(),
            target,
        });
    }
    let tokens: Vec<Token> = sorted.iter().map(|n| n.token).collect();
    let range_sizes: Vec<u128> = ranges(partitioner, &tokens).collect();

    // Greedy by largest piece: giving the next split to the range whose pieces
    // are currently largest minimizes the largest range (a classic exchange
    // argument). Ties go to the earlier range so plans are deterministic.
    let mut splits = vec![0u128; tokens.len()];
    let mut heap: BinaryHeap<(u128, Reverse<usize>)> = range_sizes
        .iter()
        .enumerate()
        .map(|(i, &size)| (size, Reverse(i)))
        .collect();
    for _ in sorted.len()..target {
        let (_, Reverse(i)) = heap.pop().expect("one entry per range");
        splits[i] += 1;
        heap.push((range_sizes[i] / (splits[i] + 1), Reverse(i)));
    }

    // Range i is (token[i-1], token[i]]; its new tokens divide it evenly.
    let size = partitioner.ring_size();
    let mut entries: Vec<(Token, Option<usize>)> =
        sorted.iter().map(|n| (n.token, Some(n.rack))).collect();
    for (i, &parts) in splits.iter().enumerate() {
        let start = tokens[(i + tokens.len() - 1) % tokens.len()].position() % size;
        // Every piece keeps at least one token: the greedy only hands a split to
        // a range whose pieces are the largest, and pieces shrink below one token
        // only once the ring holds about as many nodes as tokens (2^64).
        let (len, pieces) = (range_sizes[i], parts + 1);
        for j in 1..=parts {
            let step = j * (len / pieces) + j * (len % pieces) / pieces;
            let position = (start + step) % size;
            let token = partitioner
                .token_at(position)
                .expect("reduced modulo the ring size");
            entries.push((token, None));
        }
    }
    entries.sort_unstable_by_key(|e| e.0);

    let assigned = assign_racks(&entries, racks);
    let mut next_slot = sorted
        .iter()
        .map(|n| n.slot)
        .max()
        .expect("ring is not empty")
        + 1;
    let mut new_nodes = Vec::with_capacity(target - sorted.len());
    for (entry, &rack) in entries.iter().zip(&assigned) {
        if entry.1.is_none() {
            new_nodes.push(RingNode {
                slot: next_slot,
                rack,
                token: entry.0,
            });
            next_slot += 1;
        }
    }
    let final_tokens: Vec<Token> = entries.iter().map(|e| e.0).collect();
    Ok(GrowPlan {
        imbalance: imbalance(partitioner, &final_tokens),
        adjacent_same_rack: adjacent_same_rack(&assigned),
        new_nodes,
    })
}

/// Plans which nodes leave to shrink `ring` to `target` nodes: the highest slots,
/// that is the most recently added nodes.
pub fn plan_shrink(
    partitioner: Partitioner,
    ring: &[RingNode],
    racks: usize,
    target: usize,
) -> Result<ShrinkPlan, PlanError> {
    let sorted = validated(partitioner, ring, racks)?;
    if target == 0 || target > sorted.len() {
        return Err(PlanError::NotAShrink {
            current: sorted.len(),
            target,
        });
    }
    let mut by_slot = sorted.clone();
    by_slot.sort_unstable_by_key(|n| Reverse(n.slot));
    let remove: Vec<RingNode> = by_slot[..sorted.len() - target].to_vec();
    let leaving: HashSet<Token> = remove.iter().map(|n| n.token).collect();
    let kept: Vec<&RingNode> = sorted
        .iter()
        .filter(|n| !leaving.contains(&n.token))
        .collect();
    let tokens: Vec<Token> = kept.iter().map(|n| n.token).collect();
    let kept_racks: Vec<usize> = kept.iter().map(|n| n.rack).collect();
    Ok(ShrinkPlan {
        imbalance: imbalance(partitioner, &tokens),
        adjacent_same_rack: adjacent_same_rack(&kept_racks),
        remove,
    })
}

/// Sizes of the ranges owned by sorted `tokens`: entry i is (token[i-1], token[i]],
/// and a lone token owns the whole ring.
fn ranges(partitioner: Partitioner, tokens: &[Token]) -> impl Iterator<Item = u128> + '_ {
    let n = tokens.len();
    (0..n).map(move |i| {
        if n == 1 {
            partitioner.ring_size()
        } else {
            partitioner.distance(tokens[(i + n - 1) % n], tokens[i])
        }
    })
}

fn validated(
    partitioner: Partitioner,
    ring: &[RingNode],
    racks: usize,
) -> Result<Vec<RingNode>, PlanError> {
    if ring.is_empty() {
        return Err(PlanError::EmptyRing);
    }
    for node in ring {
        if node.token.partitioner() != partitioner {
            return Err(PlanError::WrongPartitioner {
                token: node.token.to_string(),
                partitioner,
            });
        }
        if node.rack >= racks {
            return Err(PlanError::UnknownRack {
                slot: node.slot,
                rack: node.rack,
                racks,
            });
        }
    }
    let mut sorted = ring.to_vec();
    sorted.sort_unstable_by_key(|n| n.token);
    if let Some(pair) = sorted.windows(2).find(|p| p[0].token == p[1].token) {
        return Err(PlanError::DuplicateToken(pair[0].token.to_string()));
    }
    Ok(sorted)
}

/// Picks a rack for every new entry (`None`), walking the ring in order. A new
/// node avoids the racks of the `racks − 1` nodes on either side that already
/// have one, so that replica sets stay rack-diverse; when that leaves no choice
/// the window shrinks. Ties go to the rack with the fewest nodes, then the lowest
/// index, which keeps racks equally sized and plans deterministic.
fn assign_racks(entries: &[(Token, Option<usize>)], racks: usize) -> Vec<usize> {
    let n = entries.len();
    let mut chosen: Vec<Option<usize>> = entries.iter().map(|e| e.1).collect();
    let mut count = vec![0usize; racks];
    for rack in chosen.iter().flatten() {
        count[*rack] += 1;
    }
    for i in 0..n {
        if chosen[i].is_some() {
            continue;
        }
        let mut window = (racks - 1).min(n - 1);
        let rack = loop {
            let mut banned = vec![false; racks];
            for d in 1..=window {
                for j in [(i + n - d) % n, (i + d) % n] {
                    if let Some(r) = chosen[j] {
                        banned[r] = true;
                    }
                }
            }
            let best = (0..racks)
                .filter(|&r| !banned[r])
                .min_by_key(|&r| (count[r], r));
            match best {
                Some(r) => break r,
                None => window -= 1,
            }
        };
        chosen[i] = Some(rack);
        count[rack] += 1;
    }
    chosen
        .into_iter()
        .map(|r| r.expect("every entry assigned"))
        .collect()
}

/// Ring neighbours (cyclic) in the same rack.
fn adjacent_same_rack(racks_in_ring_order: &[usize]) -> usize {
    let n = racks_in_ring_order.len();
    if n < 2 {
        return 0;
    }
    (0..n)
        .filter(|&i| racks_in_ring_order[i] == racks_in_ring_order[(i + 1) % n])
        .count()
}
