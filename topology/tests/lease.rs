//! The lease protocol on the filesystem store, with short TTLs and real time:
//! acquire, renew, release, expiry, takeover, loss, and many contending tasks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anchises_topology::cas::{CasError, CasFuture, Version, Versioned};
use anchises_topology::{
    CasKey, CasStore, FsCasStore, LeaseConfig, LeaseError, LeaseRecord, LeaseState, Leases,
};
use tempfile::TempDir;

const TTL: Duration = Duration::from_millis(400);
const SKEW: Duration = Duration::from_millis(100);

fn leases() -> (Leases, Arc<dyn CasStore>, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn CasStore> = Arc::new(FsCasStore::open(dir.path()).unwrap());
    let config = LeaseConfig {
        ttl: TTL,
        clock_skew: SKEW,
    };
    (Leases::new(store.clone(), "orders", config), store, dir)
}

#[tokio::test]
async fn a_free_scope_is_acquired_with_fencing_token_one() {
    let (leases, _, _dir) = leases();
    let lease = leases
        .try_acquire("repair", "node-a", Some("repair"))
        .await
        .unwrap();
    assert_eq!(lease.fencing_token, 1);
    assert_eq!(lease.took_over_from, None);
    let record = leases.read("repair").await.unwrap().unwrap();
    assert_eq!(record.holder.as_deref(), Some("node-a"));
    assert_eq!(record.op.as_deref(), Some("repair"));
    assert_eq!(record.fencing_token, 1);
}

#[tokio::test]
async fn a_held_lease_is_refused_with_its_holder() {
    let (leases, _, _dir) = leases();
    leases
        .try_acquire("repair", "node-a", Some("repair"))
        .await
        .unwrap();
    match leases.try_acquire("repair", "node-b", None).await {
        Err(LeaseError::Held { holder, op, .. }) => {
            assert_eq!(holder, "node-a");
            assert_eq!(op.as_deref(), Some("repair"));
        }
        other => panic!("expected held, got {other:?}"),
    }
    // The same name is refused too: a restarted holder waits out its old lease.
    assert!(matches!(
        leases.try_acquire("repair", "node-a", None).await,
        Err(LeaseError::Held { .. })
    ));
}

#[tokio::test]
async fn release_frees_the_lease_and_keeps_the_fencing_counter() {
    let (leases, _, _dir) = leases();
    let lease = leases.try_acquire("upgrade", "node-a", None).await.unwrap();
    leases.release(lease).await.unwrap();
    let record = leases.read("upgrade").await.unwrap().unwrap();
    assert_eq!((record.holder, record.fencing_token), (None, 1));
    let next = leases.try_acquire("upgrade", "node-b", None).await.unwrap();
    assert_eq!(next.fencing_token, 2);
    assert_eq!(
        next.took_over_from, None,
        "a released lease is not a takeover"
    );
}

#[tokio::test]
async fn renewal_keeps_the_lease_past_its_first_ttl() {
    let (leases, _, _dir) = leases();
    let mut lease = leases
        .try_acquire("compaction", "node-a", None)
        .await
        .unwrap();
    let first_expiry = leases.read("compaction").await.unwrap().unwrap().expires_at;
    for _ in 0..4 {
        tokio::time::sleep(TTL / 3).await;
        leases.renew(&mut lease).await.unwrap();
    }
    // More than TTL + skew after the acquisition, still held.
    assert!(matches!(
        leases.try_acquire("compaction", "node-b", None).await,
        Err(LeaseError::Held { .. })
    ));
    let record = leases.read("compaction").await.unwrap().unwrap();
    assert!(record.expires_at > first_expiry);
    assert_eq!(
        record.fencing_token, 1,
        "renewal must not bump the fencing token"
    );
}

#[tokio::test]
async fn an_expired_lease_is_taken_over_only_after_ttl_plus_skew() {
    let (leases, _, _dir) = leases();
    let started = Instant::now();
    let mut stale = leases.try_acquire("repair", "node-a", None).await.unwrap();
    let takeover = leases
        .acquire("repair", "node-b", None, Duration::from_millis(10))
        .await
        .unwrap();
    assert!(
        started.elapsed() >= TTL + SKEW,
        "taken over after {:?}",
        started.elapsed()
    );
    assert_eq!(takeover.fencing_token, 2);
    assert_eq!(takeover.took_over_from.as_deref(), Some("node-a"));
    // The old holder finds out at its next write and cannot undo the takeover.
    assert!(matches!(
        leases.renew(&mut stale).await,
        Err(LeaseError::Lost { .. })
    ));
    assert!(matches!(
        leases.release(stale).await,
        Err(LeaseError::Lost { .. })
    ));
    let record = leases.read("repair").await.unwrap().unwrap();
    assert_eq!(record.holder.as_deref(), Some("node-b"));
}

#[tokio::test]
async fn the_handle_renews_in_the_background_until_released() {
    let (leases, _, _dir) = leases();
    let handle = leases
        .acquire_and_hold(
            "restart",
            "node-a",
            Some("restart"),
            Duration::from_millis(10),
        )
        .await
        .unwrap();
    tokio::time::sleep(TTL * 3).await;
    assert!(handle.is_held());
    assert!(matches!(
        leases.try_acquire("restart", "node-b", None).await,
        Err(LeaseError::Held { .. })
    ));
    assert_eq!(handle.fencing_token(), 1);
    handle.release().await.unwrap();
    let next = leases.try_acquire("restart", "node-b", None).await.unwrap();
    assert_eq!(next.fencing_token, 2);
}

#[tokio::test]
async fn the_handle_reports_loss_when_someone_else_writes_the_lease() {
    let (leases, store, _dir) = leases();
    let mut handle = leases
        .acquire_and_hold("repair", "node-a", None, Duration::from_millis(10))
        .await
        .unwrap();
    // An operator forcibly hands the lease to someone else.
    let key = leases.key("repair").unwrap();
    let current = store.get(&key).await.unwrap().unwrap();
    let forced = LeaseRecord {
        holder: Some("operator".into()),
        op: None,
        fencing_token: 7,
        expires_at: time::OffsetDateTime::now_utc() + Duration::from_secs(60),
    };
    store
        .put_if_match(&key, serde_json::to_vec(&forced).unwrap(), &current.version)
        .await
        .unwrap();
    tokio::time::timeout(TTL, handle.lost())
        .await
        .expect("loss reported within a ttl");
    assert_eq!(handle.state(), LeaseState::Lost);
    assert!(!handle.is_held());
    assert!(matches!(
        handle.release().await,
        Err(LeaseError::Lost { .. })
    ));
    assert_eq!(leases.read("repair").await.unwrap().unwrap(), forced);
}

#[tokio::test]
async fn a_dropped_handle_stops_renewing_and_the_lease_expires() {
    let (leases, _, _dir) = leases();
    let handle = leases
        .acquire_and_hold("repair", "node-a", None, Duration::from_millis(10))
        .await
        .unwrap();
    let dropped_at = Instant::now();
    drop(handle);
    let next = leases
        .acquire("repair", "node-b", None, Duration::from_millis(10))
        .await
        .unwrap();
    assert!(
        dropped_at.elapsed() >= TTL / 2 + SKEW,
        "no renewal after drop"
    );
    assert_eq!(next.took_over_from.as_deref(), Some("node-a"));
}

#[tokio::test]
async fn scopes_are_single_key_segments() {
    let (leases, _, _dir) = leases();
    for scope in ["a/b", "..", "", ".hidden"] {
        assert!(
            matches!(
                leases.try_acquire(scope, "node-a", None).await,
                Err(LeaseError::InvalidScope(_))
            ),
            "scope {scope:?} accepted"
        );
    }
}

/// A store whose every call fails once `down` is set.
#[derive(Debug)]
struct Outage {
    inner: FsCasStore,
    down: AtomicBool,
}

impl Outage {
    fn check(&self) -> Result<(), CasError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(CasError::Backend {
                message: "simulated outage".into(),
                source: None,
            });
        }
        Ok(())
    }
}

impl CasStore for Outage {
    fn get<'a>(&'a self, key: &'a CasKey) -> CasFuture<'a, Option<Versioned>> {
        Box::pin(async move {
            self.check()?;
            self.inner.get(key).await
        })
    }
    fn put_if_absent<'a>(&'a self, key: &'a CasKey, value: Vec<u8>) -> CasFuture<'a, Version> {
        Box::pin(async move {
            self.check()?;
            self.inner.put_if_absent(key, value).await
        })
    }
    fn put_if_match<'a>(
        &'a self,
        key: &'a CasKey,
        value: Vec<u8>,
        expected: &'a Version,
    ) -> CasFuture<'a, Version> {
        Box::pin(async move {
            self.check()?;
            self.inner.put_if_match(key, value, expected).await
        })
    }
    fn delete_if_match<'a>(&'a self, key: &'a CasKey, expected: &'a Version) -> CasFuture<'a, ()> {
        Box::pin(async move {
            self.check()?;
            self.inner.delete_if_match(key, expected).await
        })
    }
    fn list<'a>(&'a self, prefix: &'a str) -> CasFuture<'a, Vec<CasKey>> {
        Box::pin(async move {
            self.check()?;
            self.inner.list(prefix).await
        })
    }
}

#[tokio::test]
async fn renewals_failing_past_the_deadline_report_the_lease_lost() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Outage {
        inner: FsCasStore::open(dir.path()).unwrap(),
        down: AtomicBool::new(false),
    });
    let config = LeaseConfig {
        ttl: TTL,
        clock_skew: SKEW,
    };
    // A generic (non-dyn) store type works as well.
    let leases: Leases<Outage> = Leases::new(store.clone(), "orders", config);
    let mut handle = leases
        .acquire_and_hold("repair", "node-a", None, Duration::from_millis(10))
        .await
        .unwrap();
    store.down.store(true, Ordering::SeqCst);
    let outage_at = Instant::now();
    tokio::time::timeout(TTL * 2, handle.lost())
        .await
        .expect("loss reported");
    assert!(
        outage_at.elapsed() <= TTL + TTL / 10,
        "reported late: {:?}",
        outage_at.elapsed()
    );
    assert!(!handle.is_held());
}

#[derive(Debug, Clone, PartialEq)]
enum Event {
    Start { holder: usize, fencing: u64 },
    End { holder: usize, fencing: u64 },
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn contending_tasks_never_overlap_and_fencing_tokens_increase() {
    const TASKS: usize = 8;
    const ROUNDS: usize = 6;
    let (leases, _, _dir) = leases();
    let audit = Arc::new(Mutex::new(Vec::new()));
    let tasks: Vec<_> = (0..TASKS)
        .map(|holder| {
            let (leases, audit) = (leases.clone(), audit.clone());
            tokio::spawn(async move {
                for round in 0..ROUNDS {
                    let handle = leases
                        .acquire_and_hold(
                            "repair",
                            &format!("node-{holder}"),
                            None,
                            Duration::from_millis(2),
                        )
                        .await
                        .unwrap();
                    let fencing = handle.fencing_token();
                    audit.lock().unwrap().push(Event::Start { holder, fencing });
                    tokio::time::sleep(Duration::from_millis(((holder + round) % 4) as u64)).await;
                    assert!(handle.is_held());
                    audit.lock().unwrap().push(Event::End { holder, fencing });
                    handle.release().await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let audit = audit.lock().unwrap();
    assert_eq!(audit.len(), TASKS * ROUNDS * 2);
    let mut last_fencing = 0;
    for pair in audit.chunks(2) {
        let Event::Start { holder, fencing } = pair[0] else {
            panic!("overlap: {pair:?}");
        };
        assert_eq!(pair[1], Event::End { holder, fencing }, "overlap");
        assert!(
            fencing > last_fencing,
            "fencing token {fencing} after {last_fencing}"
        );
        last_fencing = fencing;
    }
    // Every acquisition of a released lease counts up by exactly one.
    assert_eq!(last_fencing, (TASKS * ROUNDS) as u64);
}
