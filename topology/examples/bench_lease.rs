//! Lease throughput and takeover latency on the filesystem store.
//!
//! Prints acquisitions per second of an uncontended acquire + release loop, and
//! how long after a holder dies (its renewer stops without a release) another
//! contender, polling every 10 ms, gets the lease. Expect the takeover between
//! 2/3 TTL + skew and TTL + skew + one poll, depending on when the dead holder
//! last renewed.
//!
//! `cargo run --release -p anchises-topology --example bench_lease [iterations] [store-dir]`
//! (the store goes to a temp dir unless given: the file system decides the figure).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anchises_topology::{CasStore, FsCasStore, LeaseConfig, Leases};

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let iterations: u32 = args
        .next()
        .map_or(500, |n| n.parse().expect("iterations is a number"));
    let temp = tempfile::tempdir().expect("temp dir");
    let root = args
        .next()
        .map_or_else(|| temp.path().to_path_buf(), Into::into);
    let durable: Arc<dyn CasStore> =
        Arc::new(FsCasStore::open(root.join("durable")).expect("store opens"));
    let volatile: Arc<dyn CasStore> = Arc::new(
        FsCasStore::open(root.join("volatile"))
            .expect("store opens")
            .without_fsync(),
    );
    for (name, store) in [("fsync", &durable), ("no fsync", &volatile)] {
        let leases = Leases::new(store.clone(), "bench", LeaseConfig::default());
        let started = Instant::now();
        for _ in 0..iterations {
            let lease = leases
                .try_acquire("loop", "bench", None)
                .await
                .expect("free lease");
            leases.release(lease).await.expect("release");
        }
        let elapsed = started.elapsed();
        println!(
            "acquire + release ({name}): {iterations} in {elapsed:?}, {:.0} acquisitions/s, {:?} per cycle (store under {})",
            f64::from(iterations) / elapsed.as_secs_f64(),
            elapsed / iterations,
            root.display()
        );
    }

    let config = LeaseConfig {
        ttl: Duration::from_millis(1500),
        clock_skew: Duration::from_millis(250),
    };
    let leases = Leases::new(durable, "bench", config);
    for hold in [
        Duration::ZERO,
        Duration::from_millis(1000),
        Duration::from_millis(2200),
    ] {
        let holder = leases
            .acquire_and_hold("takeover", "doomed", None, Duration::from_millis(10))
            .await
            .expect("acquire");
        tokio::time::sleep(hold).await;
        drop(holder);
        let died = Instant::now();
        let heir = leases
            .acquire("takeover", "heir", None, Duration::from_millis(10))
            .await
            .expect("takeover");
        println!(
            "takeover after the holder died {hold:?} into its lease: {:?} (ttl {:?}, skew {:?}, fencing token {})",
            died.elapsed(),
            config.ttl,
            config.clock_skew,
            heir.fencing_token
        );
        leases.release(heir).await.expect("release");
    }
}
