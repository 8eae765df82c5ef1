//! The slot registry on the filesystem store: claiming, keeping, heartbeats,
//! takeovers of dead nodes only, seeds, and racing claimers.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use anchises_topology::{
    CasStore, ClaimOutcome, DcSpec, FsCasStore, NodeIdentity, Partitioner, PlannedSlot, Registry,
    RegistryError, RingLayout, SlotState,
};
use tempfile::TempDir;

const STALE: Duration = Duration::from_millis(300);

fn registry() -> (Arc<Registry>, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn CasStore> = Arc::new(FsCasStore::open(dir.path()).unwrap());
    (Arc::new(Registry::new(store, "orders")), dir)
}

/// 3 racks × `per_rack` slots of a single-token layout.
fn slots(per_rack: u64) -> Vec<PlannedSlot> {
    let spec = DcSpec {
        name: "dc1".into(),
        racks: vec!["a".into(), "b".into(), "c".into()],
        nodes: 3 * per_rack,
        offset: None,
    };
    PlannedSlot::from_layout(&RingLayout::new(Partitioner::Murmur3, &[spec]).unwrap().dcs[0])
}

fn node(id: &str, rack: &str) -> NodeIdentity {
    NodeIdentity {
        node_id: id.into(),
        dc: "dc1".into(),
        rack: rack.into(),
        address: format!("addr-of-{id}"),
    }
}

fn never_down(_: &anchises_topology::SlotClaim) -> bool {
    false
}

fn always_down(_: &anchises_topology::SlotClaim) -> bool {
    true
}

#[tokio::test]
async fn a_node_claims_the_lowest_free_slot_of_its_rack_with_its_token() {
    let (registry, _dir) = registry();
    let plan = slots(2);
    let first = registry
        .claim(&node("n1", "b"), &plan, STALE, never_down)
        .await
        .unwrap();
    assert_eq!(
        (first.claim.slot, first.outcome.clone()),
        (1, ClaimOutcome::Fresh)
    );
    assert_eq!(first.claim.tokens, plan[1].tokens);
    assert_eq!(first.claim.state, SlotState::Joining);
    let second = registry
        .claim(&node("n2", "b"), &plan, STALE, never_down)
        .await
        .unwrap();
    assert_eq!(second.claim.slot, 4);
    assert!(matches!(
        registry
            .claim(&node("n3", "b"), &plan, STALE, never_down)
            .await,
        Err(RegistryError::NoFreeSlot { .. })
    ));
    assert!(matches!(
        registry
            .claim(&node("n4", "z"), &plan, STALE, never_down)
            .await,
        Err(RegistryError::NoSlotInRack { .. })
    ));
    let stored = registry.claims("dc1").await.unwrap();
    assert_eq!(stored.keys().copied().collect::<Vec<_>>(), [1, 4]);
}

#[tokio::test]
async fn a_restarted_sidecar_keeps_its_slot_even_after_its_heartbeat_went_stale() {
    let (registry, _dir) = registry();
    let plan = slots(2);
    let first = registry
        .claim(&node("n1", "a"), &plan, STALE, never_down)
        .await
        .unwrap();
    tokio::time::sleep(STALE * 2).await;
    let mut moved = node("n1", "a");
    moved.address = "new-address".into();
    let again = registry
        .claim(&moved, &plan, STALE, always_down)
        .await
        .unwrap();
    assert_eq!(again.outcome, ClaimOutcome::Kept);
    assert_eq!(again.claim.slot, first.claim.slot);
    assert_eq!(again.claim.address, "new-address");
    assert!(again.claim.heartbeat_at > first.claim.heartbeat_at);
}

#[tokio::test]
async fn heartbeats_refresh_the_claim_and_report_a_lost_slot() {
    let (registry, _dir) = registry();
    let plan = slots(1);
    let mut mine = registry
        .claim(&node("n1", "a"), &plan, STALE, never_down)
        .await
        .unwrap();
    registry
        .heartbeat(&mut mine, SlotState::Normal)
        .await
        .unwrap();
    let stored = registry.claims("dc1").await.unwrap();
    assert_eq!(stored[&0].0.state, SlotState::Normal);

    tokio::time::sleep(STALE * 2).await;
    let heir = registry
        .claim(&node("n2", "a"), &plan, STALE, always_down)
        .await
        .unwrap();
    assert_eq!(heir.claim.slot, 0);
    assert!(matches!(
        registry.heartbeat(&mut mine, SlotState::Normal).await,
        Err(RegistryError::Lost { slot: 0, .. })
    ));
}

#[tokio::test]
async fn a_dead_slot_is_taken_over_only_when_stale_and_down() {
    let (registry, _dir) = registry();
    let plan = slots(1);
    let dead = registry
        .claim(&node("dead", "c"), &plan, STALE, never_down)
        .await
        .unwrap();

    // Fresh heartbeat: not replaced even if the ring says DOWN (a restart).
    assert!(matches!(
        registry
            .claim(&node("new", "c"), &plan, STALE, always_down)
            .await,
        Err(RegistryError::NoFreeSlot { .. })
    ));
    tokio::time::sleep(STALE * 2).await;
    // Stale heartbeat but the ring still sees it UP: the sidecar died, not the node.
    assert!(matches!(
        registry
            .claim(&node("new", "c"), &plan, STALE, never_down)
            .await,
        Err(RegistryError::NoFreeSlot { .. })
    ));
    let only_the_dead_one = |c: &anchises_topology::SlotClaim| c.node_id == "dead";
    let taken = registry
        .claim(&node("new", "c"), &plan, STALE, only_the_dead_one)
        .await
        .unwrap();
    assert_eq!(
        taken.outcome,
        ClaimOutcome::Takeover {
            replace_address: "addr-of-dead".into()
        }
    );
    assert_eq!(taken.claim.slot, dead.claim.slot);
    assert_eq!(
        taken.claim.tokens, dead.claim.tokens,
        "the slot keeps its tokens"
    );
    assert_eq!(taken.claim.state, SlotState::Replacing);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_claimers_never_share_a_slot() {
    let (registry, _dir) = registry();
    let plan = Arc::new(slots(2));
    let barrier = Arc::new(tokio::sync::Barrier::new(12));
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let (registry, plan, barrier) = (registry.clone(), plan.clone(), barrier.clone());
            tokio::spawn(async move {
                let me = node(&format!("n{i}"), ["a", "b", "c"][i % 3]);
                barrier.wait().await;
                registry.claim(&me, &plan, STALE, always_down).await
            })
        })
        .collect();
    let mut won = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            Ok(claim) => won.push(claim),
            Err(RegistryError::NoFreeSlot { .. }) => {}
            Err(e) => panic!("claim failed: {e}"),
        }
    }
    assert_eq!(won.len(), 6, "six slots, six winners");
    let slots_won: HashSet<u64> = won.iter().map(|c| c.claim.slot).collect();
    assert_eq!(slots_won.len(), 6, "two nodes on one slot: {won:?}");
    for claim in &won {
        assert_eq!(
            claim.outcome,
            ClaimOutcome::Fresh,
            "a live node was replaced"
        );
        assert_eq!(plan[claim.claim.slot as usize].rack, claim.claim.rack);
    }
    let stored = registry.claims("dc1").await.unwrap();
    for claim in &won {
        assert_eq!(stored[&claim.claim.slot].0.node_id, claim.claim.node_id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_replacements_take_a_dead_slot_exactly_once() {
    let (registry, _dir) = registry();
    let plan = Arc::new(slots(1));
    registry
        .claim(&node("dead", "a"), &plan, STALE, never_down)
        .await
        .unwrap();
    tokio::time::sleep(STALE * 2).await;
    let tasks: Vec<_> = (0..6)
        .map(|i| {
            let (registry, plan) = (registry.clone(), plan.clone());
            tokio::spawn(async move {
                let down = |c: &anchises_topology::SlotClaim| c.node_id == "dead";
                registry
                    .claim(&node(&format!("r{i}"), "a"), &plan, STALE, down)
                    .await
            })
        })
        .collect();
    let mut takeovers = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(claim) => {
                assert!(matches!(claim.outcome, ClaimOutcome::Takeover { .. }));
                takeovers += 1;
            }
            Err(RegistryError::NoFreeSlot { .. }) => {}
            Err(e) => panic!("claim failed: {e}"),
        }
    }
    assert_eq!(takeovers, 1);
}

#[tokio::test]
async fn seeds_are_the_lowest_live_slots_of_each_rack() {
    let (registry, _dir) = registry();
    let plan = slots(3);
    for (id, rack) in [
        ("a0", "a"),
        ("b0", "b"),
        ("c0", "c"),
        ("a1", "a"),
        ("b1", "b"),
        ("a2", "a"),
    ] {
        registry
            .claim(&node(id, rack), &plan, STALE, never_down)
            .await
            .unwrap();
    }
    let seeds = registry
        .seeds(&["dc1"], 2, Duration::from_secs(60))
        .await
        .unwrap();
    let slots_and_addresses: Vec<(u64, &str)> =
        seeds.iter().map(|s| (s.slot, s.address.as_str())).collect();
    assert_eq!(
        slots_and_addresses,
        [
            (0, "addr-of-a0"),
            (1, "addr-of-b0"),
            (2, "addr-of-c0"),
            (3, "addr-of-a1"),
            (4, "addr-of-b1")
        ]
    );
    // A leaving node stops being a seed, and the next one of its rack steps in.
    let mut a0 = registry
        .claim(&node("a0", "a"), &plan, STALE, never_down)
        .await
        .unwrap();
    registry
        .heartbeat(&mut a0, SlotState::Leaving)
        .await
        .unwrap();
    let seeds = registry
        .seeds(&["dc1"], 1, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(seeds.iter().map(|s| s.slot).collect::<Vec<_>>(), [1, 2, 3]);
    // Nodes whose heartbeat went stale are no seeds.
    tokio::time::sleep(STALE).await;
    assert_eq!(registry.seeds(&["dc1"], 2, STALE / 2).await.unwrap(), []);
}

#[tokio::test]
async fn a_released_slot_is_free_again_and_names_are_checked() {
    let (registry, _dir) = registry();
    let plan = slots(1);
    let claim = registry
        .claim(&node("n1", "a"), &plan, STALE, never_down)
        .await
        .unwrap();
    registry.release(claim).await.unwrap();
    let again = registry
        .claim(&node("n2", "a"), &plan, STALE, never_down)
        .await
        .unwrap();
    assert_eq!((again.claim.slot, again.outcome), (0, ClaimOutcome::Fresh));
    let mut bad = node("n3", "a");
    bad.dc = "../etc".into();
    assert!(matches!(
        registry.claim(&bad, &plan, STALE, never_down).await,
        Err(RegistryError::InvalidName(_))
    ));
}
