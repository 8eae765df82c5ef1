//! Token math and the single-token layout: known values, errors, and the ring
//! properties (unique, in range, balanced, rack-alternating) under proptest.

use anchises_topology::layout::derived_dc_offset;
use anchises_topology::tokens::single_token_yaml_settings;
use anchises_topology::{
    DcSpec, LayoutError, Partitioner, RingLayout, Token, TokenError, TokenMode, VnodeConfig,
};
use proptest::prelude::*;

fn dc(name: &str, racks: usize, nodes: u64, offset: Option<u64>) -> DcSpec {
    DcSpec {
        name: name.to_string(),
        racks: (0..racks).map(|r| format!("{name}-rack{r}")).collect(),
        nodes,
        offset,
    }
}

fn tokens_of(layout: &RingLayout, dc: &str) -> Vec<String> {
    let dc = layout.dc(dc).unwrap();
    dc.slots.iter().map(|s| s.token.to_string()).collect()
}

#[test]
fn partitioner_bounds_render_as_cassandra_prints_them() {
    assert_eq!(
        Partitioner::Murmur3.min_token().to_string(),
        "-9223372036854775808"
    );
    assert_eq!(
        Partitioner::Murmur3.max_token().to_string(),
        "9223372036854775807"
    );
    assert_eq!(Partitioner::Random.min_token().to_string(), "0");
    assert_eq!(
        Partitioner::Random.max_token().to_string(),
        "170141183460469231731687303715884105728"
    );
}

#[test]
fn tokens_parse_back_and_out_of_range_values_are_rejected() {
    for (p, text) in [
        (Partitioner::Murmur3, "-9223372036854775808"),
        (Partitioner::Murmur3, "0"),
        (Partitioner::Murmur3, "9223372036854775807"),
        (
            Partitioner::Random,
            "170141183460469231731687303715884105728",
        ),
    ] {
        assert_eq!(p.parse_token(text).unwrap().to_string(), text);
    }
    for (p, text) in [
        (Partitioner::Murmur3, "9223372036854775808"),
        (Partitioner::Murmur3, "1.5"),
        (Partitioner::Random, "-1"),
        (
            Partitioner::Random,
            "170141183460469231731687303715884105729",
        ),
    ] {
        assert!(
            matches!(p.parse_token(text), Err(TokenError::InvalidToken { .. })),
            "{p} accepted {text}"
        );
    }
}

#[test]
fn partitioners_parse_from_short_and_class_names() {
    for name in [
        "murmur3",
        "Murmur3Partitioner",
        "org.apache.cassandra.dht.Murmur3Partitioner",
    ] {
        assert_eq!(name.parse::<Partitioner>().unwrap(), Partitioner::Murmur3);
    }
    assert_eq!(
        Partitioner::Random
            .class_name()
            .parse::<Partitioner>()
            .unwrap(),
        Partitioner::Random
    );
    assert!("ByteOrderedPartitioner".parse::<Partitioner>().is_err());
}

#[test]
fn a_three_node_murmur3_ring_has_the_well_known_tokens() {
    let layout = RingLayout::new(Partitioner::Murmur3, &[dc("dc1", 3, 3, Some(0))]).unwrap();
    assert_eq!(
        tokens_of(&layout, "dc1"),
        [
            "-9223372036854775808",
            "-3074457345618258603",
            "3074457345618258602"
        ]
    );
}

#[test]
fn a_four_node_random_ring_divides_2_pow_127_evenly() {
    let layout = RingLayout::new(Partitioner::Random, &[dc("dc1", 1, 4, Some(0))]).unwrap();
    assert_eq!(
        tokens_of(&layout, "dc1"),
        [
            "0",
            "42535295865117307932921825928971026432",
            "85070591730234615865843651857942052864",
            "127605887595351923798765477786913079296"
        ]
    );
}

#[test]
fn slots_go_round_robin_over_racks_and_are_shifted_by_the_dc_offset() {
    let layout = RingLayout::new(Partitioner::Murmur3, &[dc("us-east", 3, 6, None)]).unwrap();
    let east = layout.dc("us-east").unwrap();
    assert_eq!(east.offset, derived_dc_offset("us-east"));
    assert!((1..=4096).contains(&east.offset));
    let racks: Vec<&str> = east.slots.iter().map(|s| east.rack_name(s)).collect();
    assert_eq!(
        racks,
        [
            "us-east-rack0",
            "us-east-rack1",
            "us-east-rack2",
            "us-east-rack0",
            "us-east-rack1",
            "us-east-rack2"
        ]
    );
    let slot4 = layout.slot("us-east", 4).unwrap();
    let unshifted = RingLayout::new(Partitioner::Murmur3, &[dc("us-east", 3, 6, Some(0))]).unwrap();
    assert_eq!(
        slot4.token.position(),
        unshifted.slot("us-east", 4).unwrap().token.position() + u128::from(east.offset)
    );
    assert!(layout.slot("us-east", 6).is_none());
}

/// Finds two names whose derived offsets collide, the way two AWS regions did
/// under Priam's hash.
fn colliding_names() -> (String, String) {
    let mut seen = std::collections::HashMap::new();
    for i in 0.. {
        let name = format!("region-{i}");
        if let Some(other) = seen.insert(derived_dc_offset(&name), name.clone()) {
            return (other, name);
        }
    }
    unreachable!("4096 offsets cannot hold unbounded names")
}

#[test]
fn colliding_dc_offsets_are_an_error_naming_both_dcs_and_an_explicit_offset_resolves_it() {
    let (first, second) = colliding_names();
    let specs = [dc(&first, 1, 3, None), dc(&second, 1, 3, None)];
    match RingLayout::new(Partitioner::Murmur3, &specs) {
        Err(error @ LayoutError::OffsetCollision { .. }) => {
            let message = error.to_string();
            assert!(
                message.contains(&first) && message.contains(&second),
                "{message}"
            );
        }
        other => panic!("expected an offset collision, got {other:?}"),
    }
    let offset = derived_dc_offset(&first) % 4096 + 1;
    let resolved = [dc(&first, 1, 3, None), dc(&second, 1, 3, Some(offset))];
    assert!(RingLayout::new(Partitioner::Murmur3, &resolved).is_ok());
}

#[test]
fn explicit_offsets_that_land_on_another_dcs_token_are_an_error() {
    let half = 1u64 << 63;
    let specs = [dc("one", 1, 1, Some(half)), dc("two", 1, 2, Some(0))];
    match RingLayout::new(Partitioner::Murmur3, &specs) {
        Err(LayoutError::TokenCollision {
            first,
            second,
            token,
        }) => {
            assert_eq!(
                (first.as_str(), second.as_str(), token.as_str()),
                ("one", "two", "0")
            );
        }
        other => panic!("expected a token collision, got {other:?}"),
    }
}

#[test]
fn bad_specs_are_rejected() {
    let p = Partitioner::Murmur3;
    assert_eq!(RingLayout::new(p, &[]), Err(LayoutError::NoDataCenters));
    assert!(matches!(
        RingLayout::new(p, &[dc("a", 3, 4, None)]),
        Err(LayoutError::UnevenRacks {
            nodes: 4,
            racks: 3,
            ..
        })
    ));
    assert!(matches!(
        RingLayout::new(p, &[dc("a", 0, 3, None)]),
        Err(LayoutError::NoRacks { .. })
    ));
    assert!(matches!(
        RingLayout::new(p, &[dc("a", 1, 0, None)]),
        Err(LayoutError::NoNodes { .. })
    ));
    assert!(matches!(
        RingLayout::new(p, &[dc("a", 1, 3, None), dc("a", 1, 3, None)]),
        Err(LayoutError::DuplicateDataCenter(_))
    ));
    let mut twice = dc("a", 2, 2, None);
    twice.racks[1] = twice.racks[0].clone();
    assert!(matches!(
        RingLayout::new(p, &[twice]),
        Err(LayoutError::DuplicateRack { .. })
    ));
    assert!(matches!(
        RingLayout::new(p, &[dc("a", 1, 4, Some(1 << 62))]),
        Err(LayoutError::OffsetTooLarge { .. })
    ));
}

#[test]
fn vnode_settings_are_validated_and_rendered_for_cassandra_yaml() {
    let config = VnodeConfig::new(16, 3).unwrap();
    assert_eq!(
        config.yaml_settings(),
        [
            ("num_tokens", "16".to_string()),
            (
                "allocate_tokens_for_local_replication_factor",
                "3".to_string()
            )
        ]
    );
    assert_eq!(VnodeConfig::default(), config);
    assert_eq!(
        VnodeConfig::new(0, 3),
        Err(TokenError::NumTokens { got: 0, max: 256 })
    );
    assert!(VnodeConfig::new(257, 3).is_err());
    assert!(VnodeConfig::new(256, 0).is_err());
    let mode: TokenMode =
        serde_json::from_str(r#"{"mode":"vnodes","num_tokens":8,"allocate_for_local_rf":3}"#)
            .unwrap();
    assert_eq!(mode, TokenMode::Vnodes(VnodeConfig::new(8, 3).unwrap()));
    assert!(
        serde_json::from_str::<TokenMode>(
            r#"{"mode":"vnodes","num_tokens":0,"allocate_for_local_rf":3}"#
        )
        .is_err(),
        "deserialization must validate"
    );
    let token = Partitioner::Murmur3.parse_token("-42").unwrap();
    assert_eq!(
        single_token_yaml_settings(token),
        [
            ("num_tokens", "1".to_string()),
            ("initial_token", "-42".to_string())
        ]
    );
}

fn partitioner() -> impl Strategy<Value = Partitioner> {
    prop_oneof![Just(Partitioner::Murmur3), Just(Partitioner::Random)]
}

/// 1–4 DCs with unique names, 1–4 racks and 1–40 nodes per rack.
fn cluster() -> impl Strategy<Value = Vec<DcSpec>> {
    prop::collection::btree_map("[a-z]{2,6}-[0-9]", (1usize..=4, 1u64..=40), 1..=4).prop_map(
        |dcs| {
            dcs.into_iter()
                .map(|(name, (racks, per_rack))| dc(&name, racks, racks as u64 * per_rack, None))
                .collect()
        },
    )
}

fn layout_or_skip(p: Partitioner, specs: &[DcSpec]) -> Result<RingLayout, TestCaseError> {
    match RingLayout::new(p, specs) {
        Ok(layout) => Ok(layout),
        // Random names collide on their offsets now and then; that error has its
        // own test, and here it would only hide the properties.
        Err(LayoutError::OffsetCollision { .. }) => Err(TestCaseError::reject("offset collision")),
        Err(e) => Err(TestCaseError::fail(format!("layout failed: {e}"))),
    }
}

fn sorted_ring(layout: &RingLayout, dc: usize) -> Vec<(Token, usize)> {
    let mut ring: Vec<(Token, usize)> = layout.dcs[dc]
        .slots
        .iter()
        .map(|s| (s.token, s.rack))
        .collect();
    ring.sort_unstable();
    ring
}

proptest! {
    #[test]
    fn tokens_are_unique_and_inside_the_ring(p in partitioner(), specs in cluster()) {
        let layout = layout_or_skip(p, &specs)?;
        let mut all: Vec<Token> = layout.dcs.iter().flat_map(|dc| dc.slots.iter().map(|s| s.token)).collect();
        let count = all.len();
        for token in &all {
            prop_assert!(token.position() <= p.max_position());
            prop_assert_eq!(p.parse_token(&token.to_string()).unwrap(), *token);
        }
        all.sort_unstable();
        all.dedup();
        prop_assert_eq!(all.len(), count);
    }

    #[test]
    fn every_dc_ring_is_balanced_within_one_token(p in partitioner(), specs in cluster()) {
        let layout = layout_or_skip(p, &specs)?;
        for i in 0..layout.dcs.len() {
            let ring = sorted_ring(&layout, i);
            let n = ring.len();
            let ideal_floor = p.ring_size() / n as u128;
            let ideal_ceil = ideal_floor + u128::from(p.ring_size() % n as u128 != 0);
            for j in 0..n {
                let range = if n == 1 { p.ring_size() } else { p.distance(ring[(j + n - 1) % n].0, ring[j].0) };
                prop_assert!(
                    range == ideal_floor || range == ideal_ceil,
                    "range {} of {} nodes is {}, ideal {}", j, n, range, ideal_floor
                );
            }
        }
    }

    #[test]
    fn every_replica_set_of_rf_up_to_the_rack_count_spans_distinct_racks(
        p in partitioner(), specs in cluster()
    ) {
        let layout = layout_or_skip(p, &specs)?;
        for i in 0..layout.dcs.len() {
            let racks = layout.dcs[i].racks.len();
            let ring = sorted_ring(&layout, i);
            let n = ring.len();
            // NetworkTopologyStrategy walks clockwise from a token; RF = racks is
            // the strictest window, smaller RFs are its prefixes.
            for start in 0..n {
                let mut seen = vec![false; racks];
                for k in 0..racks.min(n) {
                    let rack = ring[(start + k) % n].1;
                    prop_assert!(!seen[rack], "replica set at {} repeats rack {}", start, rack);
                    seen[rack] = true;
                }
            }
        }
    }
}
