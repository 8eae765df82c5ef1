//! Times the single-token layout of a large cluster: 3 data centers × 3 racks ×
//! 1,000 nodes per rack (9,000 tokens, every DC pair checked for collisions),
//! and a doubling grow plan of one of those DCs. Prints the median of N runs.
//!
//! `cargo run --release -p anchises-topology --example bench_tokens [runs]`

use std::time::{Duration, Instant};

use anchises_topology::plan::plan_grow;
use anchises_topology::{DcSpec, Partitioner, RingLayout, RingNode};

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

fn time<T>(runs: usize, mut f: impl FnMut() -> T) -> Duration {
    let samples = (0..runs)
        .map(|_| {
            let started = Instant::now();
            std::hint::black_box(f());
            started.elapsed()
        })
        .collect();
    median(samples)
}

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .map_or(51, |n| n.parse().expect("runs is a number"));
    let specs: Vec<DcSpec> = ["us-east-1", "us-west-2", "eu-west-1"]
        .iter()
        .map(|name| DcSpec {
            name: name.to_string(),
            racks: ["a", "b", "c"]
                .iter()
                .map(|z| format!("{name}{z}"))
                .collect(),
            nodes: 3_000,
            offset: None,
        })
        .collect();

    for partitioner in [Partitioner::Murmur3, Partitioner::Random] {
        let layout_time = time(runs, || {
            RingLayout::new(partitioner, &specs).expect("layout")
        });
        let layout = RingLayout::new(partitioner, &specs).expect("layout");
        let dc = &layout.dcs[0];
        let ring: Vec<RingNode> = dc
            .slots
            .iter()
            .map(|s| RingNode {
                slot: s.slot,
                rack: s.rack,
                token: s.token,
            })
            .collect();
        let grow_time = time(runs, || {
            plan_grow(partitioner, &ring, 3, 6_000).expect("grow plan")
        });
        println!(
            "{partitioner:>8}: layout 3 dcs x 3 racks x 1000 nodes/rack (9000 tokens): median {layout_time:?}; \
             doubling plan 3000 -> 6000 nodes: median {grow_time:?} ({runs} runs)"
        );
    }
}
