//! Grow and shrink planning: where new tokens go, which racks they get, which
//! nodes leave, and the imbalance each plan reports.

use anchises_topology::plan::{imbalance, plan_grow, plan_shrink};
use anchises_topology::{DcSpec, Partitioner, PlanError, RingLayout, RingNode, Token};
use proptest::prelude::*;

/// The nodes of a freshly laid out single-DC ring.
fn ring(p: Partitioner, racks: usize, nodes: u64) -> Vec<RingNode> {
    let spec = DcSpec {
        name: "dc1".into(),
        racks: (0..racks).map(|r| format!("r{r}")).collect(),
        nodes,
        offset: None,
    };
    let layout = RingLayout::new(p, &[spec]).unwrap();
    layout.dcs[0]
        .slots
        .iter()
        .map(|s| RingNode {
            slot: s.slot,
            rack: s.rack,
            token: s.token,
        })
        .collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

/// Racks in ring order after adding `new` to `old`.
fn racks_in_ring_order(old: &[RingNode], new: &[RingNode]) -> Vec<usize> {
    let mut all: Vec<RingNode> = old.iter().chain(new).copied().collect();
    all.sort_unstable_by_key(|n| n.token);
    all.iter().map(|n| n.rack).collect()
}

#[test]
fn doubling_splits_every_range_at_its_midpoint() {
    let p = Partitioner::Murmur3;
    let old = ring(p, 3, 6);
    let plan = plan_grow(p, &old, 3, 12).unwrap();
    assert_eq!(plan.new_nodes.len(), 6);
    assert!(close(plan.imbalance, 1.0), "imbalance {}", plan.imbalance);
    let mut sorted = old.clone();
    sorted.sort_unstable_by_key(|n| n.token);
    for new in &plan.new_nodes {
        let after = sorted
            .iter()
            .rev()
            .find(|n| n.token < new.token)
            .unwrap_or(sorted.last().unwrap());
        let gap = p.distance(after.token, new.token);
        assert_eq!(gap, p.ring_size() / 12, "not a midpoint");
    }
    // New slots follow the highest existing one; nothing is renumbered.
    let slots: Vec<u64> = plan.new_nodes.iter().map(|n| n.slot).collect();
    assert_eq!(slots, (6..12).collect::<Vec<_>>());
}

#[test]
fn doubling_a_three_rack_ring_keeps_racks_alternating() {
    let p = Partitioner::Random;
    let old = ring(p, 3, 9);
    let plan = plan_grow(p, &old, 3, 18).unwrap();
    assert_eq!(plan.adjacent_same_rack, 0);
    let racks = racks_in_ring_order(&old, &plan.new_nodes);
    for i in 0..racks.len() {
        let window = [racks[i], racks[(i + 1) % 18], racks[(i + 2) % 18]];
        assert!(
            window[0] != window[1] && window[1] != window[2] && window[0] != window[2],
            "{racks:?}"
        );
    }
    let mut per_rack = [0; 3];
    for rack in racks {
        per_rack[rack] += 1;
    }
    assert_eq!(per_rack, [6, 6, 6]);
}

#[test]
fn doubling_a_two_rack_ring_reports_the_unavoidable_rack_neighbours() {
    let p = Partitioner::Murmur3;
    let plan = plan_grow(p, &ring(p, 2, 4), 2, 8).unwrap();
    assert!(plan.adjacent_same_rack > 0);
    assert!(close(plan.imbalance, 1.0));
}

#[test]
fn other_sizes_split_the_largest_ranges_first() {
    let p = Partitioner::Murmur3;
    let old = ring(p, 3, 3);
    // One extra node: one range halves, the other two stay at a third.
    let plan = plan_grow(p, &old, 3, 4).unwrap();
    assert!(
        close(plan.imbalance, 4.0 / 3.0),
        "imbalance {}",
        plan.imbalance
    );
    // Tripling splits every range in three, which is balanced again.
    let plan = plan_grow(p, &old, 3, 9).unwrap();
    assert!(close(plan.imbalance, 1.0), "imbalance {}", plan.imbalance);
    // A grown ring's largest range goes first: 4 → 5 splits a remaining third.
    let grown: Vec<RingNode> = old
        .iter()
        .copied()
        .chain(plan_grow(p, &old, 3, 4).unwrap().new_nodes)
        .collect();
    let plan = plan_grow(p, &grown, 3, 5).unwrap();
    assert!(
        close(plan.imbalance, 5.0 / 3.0),
        "imbalance {}",
        plan.imbalance
    );
}

#[test]
fn shrinking_removes_the_most_recent_slots_and_undoes_a_grow() {
    let p = Partitioner::Murmur3;
    let old = ring(p, 3, 6);
    let grown: Vec<RingNode> = old
        .iter()
        .copied()
        .chain(plan_grow(p, &old, 3, 12).unwrap().new_nodes)
        .collect();
    let plan = plan_shrink(p, &grown, 3, 6).unwrap();
    let removed: Vec<u64> = plan.remove.iter().map(|n| n.slot).collect();
    assert_eq!(removed, [11, 10, 9, 8, 7, 6]);
    assert!(close(plan.imbalance, 1.0));
    assert_eq!(plan.adjacent_same_rack, 0);
    // Shrinking an initial layout cuts a contiguous stretch of the ring, and the
    // imbalance says so.
    let plan = plan_shrink(p, &old, 3, 3).unwrap();
    assert!(close(plan.imbalance, 2.0), "imbalance {}", plan.imbalance);
    assert_eq!(plan_shrink(p, &old, 3, 6).unwrap().remove, []);
}

#[test]
fn invalid_plans_are_rejected() {
    let p = Partitioner::Murmur3;
    let old = ring(p, 3, 3);
    assert_eq!(plan_grow(p, &[], 3, 3), Err(PlanError::EmptyRing));
    assert!(matches!(
        plan_grow(p, &old, 3, 3),
        Err(PlanError::NotAGrow { .. })
    ));
    assert!(matches!(
        plan_shrink(p, &old, 3, 0),
        Err(PlanError::NotAShrink { .. })
    ));
    assert!(matches!(
        plan_shrink(p, &old, 3, 4),
        Err(PlanError::NotAShrink { .. })
    ));
    assert!(matches!(
        plan_grow(p, &old, 2, 6),
        Err(PlanError::UnknownRack { .. })
    ));
    assert!(matches!(
        plan_grow(Partitioner::Random, &old, 3, 6),
        Err(PlanError::WrongPartitioner { .. })
    ));
    let twice = [old[0], RingNode { slot: 9, ..old[0] }];
    assert!(matches!(
        plan_grow(p, &twice, 3, 4),
        Err(PlanError::DuplicateToken(_))
    ));
}

#[test]
fn a_lone_node_owns_the_whole_ring_and_is_halved_by_the_next() {
    let p = Partitioner::Random;
    let lone = [RingNode {
        slot: 0,
        rack: 0,
        token: p.token_at(5).unwrap(),
    }];
    assert!(close(imbalance(p, &[lone[0].token]), 1.0));
    let plan = plan_grow(p, &lone, 1, 2).unwrap();
    assert_eq!(
        plan.new_nodes[0].token,
        p.token_at(5 + (1u128 << 126)).unwrap()
    );
    assert!(close(plan.imbalance, 1.0));
    // Splitting the range that wraps past the maximum token wraps too.
    let near_max = [RingNode {
        slot: 0,
        rack: 0,
        token: p.token_at(p.ring_size() - 2).unwrap(),
    }];
    let plan = plan_grow(p, &near_max, 1, 4).unwrap();
    let tokens: Vec<Token> = plan.new_nodes.iter().map(|n| n.token).collect();
    let quarter = p.ring_size() / 4;
    let expected: Vec<Token> = [quarter - 2, 2 * quarter - 2, 3 * quarter - 2]
        .into_iter()
        .map(|v| p.token_at(v).unwrap())
        .collect();
    assert_eq!(tokens, expected);
}

proptest! {
    #[test]
    fn grown_rings_have_unique_tokens_and_the_predicted_imbalance(
        racks in 1usize..=4, per_rack in 1u64..=20, extra_fraction in 0.01f64..1.0
    ) {
        let p = Partitioner::Murmur3;
        let old = ring(p, racks, racks as u64 * per_rack);
        let n = old.len();
        let target = n + ((n as f64 * extra_fraction).ceil() as usize).clamp(1, n);
        let plan = plan_grow(p, &old, racks, target).unwrap();
        prop_assert_eq!(plan.new_nodes.len(), target - n);
        let mut tokens: Vec<Token> = old.iter().chain(&plan.new_nodes).map(|n| n.token).collect();
        tokens.sort_unstable();
        tokens.dedup();
        prop_assert_eq!(tokens.len(), target);
        // Until every range is split once, an unsplit range of size 1/n is the
        // largest: imbalance m/n. At exactly 2n the ring is balanced again.
        let expected = if target == 2 * n { 1.0 } else { target as f64 / n as f64 };
        prop_assert!((plan.imbalance - expected).abs() < 1e-6, "imbalance {} expected {}", plan.imbalance, expected);
        if racks >= 3 && target == 2 * n {
            prop_assert_eq!(plan.adjacent_same_rack, 0);
        }
    }
}
