//! The conformance suite every [`CasStore`] backend must pass: one definition of
//! the contract that the filesystem store runs here and that the S3 and
//! Cassandra-LWT stores run in their own crates.
//!
//! Each case is a public async function taking a store, working under a fresh
//! random prefix so that cases can share one bucket or keyspace, and panicking
//! with a message on the first violation. [`cas_conformance_tests!`] expands to
//! one `#[test]` per case for a backend's setup function:
//!
//! ```
//! use std::sync::Arc;
//! use anchises_topology::{CasStore, FsCasStore};
//!
//! async fn setup() -> (Arc<dyn CasStore>, tempfile::TempDir) {
//!     let dir = tempfile::tempdir().unwrap();
//!     (Arc::new(FsCasStore::open(dir.path()).unwrap()), dir)
//! }
//!
//! anchises_topology::cas_conformance_tests!(setup);
//! # fn main() {}
//! ```
//!
//! It is test code that ships in the library on purpose (it has no dependencies
//! of its own); nothing in production calls it.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::Barrier;

use crate::cas::{CasError, CasKey, CasStore, Version};

/// Runs one case on a fresh multi-threaded runtime (real parallelism for the
/// racing cases), keeping the setup's guard (say, a temp dir) alive until the end.
pub fn run<G, SF, CF>(setup: impl FnOnce() -> SF, case: impl FnOnce(Arc<dyn CasStore>) -> CF)
where
    SF: Future<Output = (Arc<dyn CasStore>, G)>,
    CF: Future<Output = ()>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("test runtime starts");
    runtime.block_on(async {
        let (store, _guard) = setup().await;
        case(store).await;
    });
}

/// Expands to one `#[test]` per conformance case. The argument is a path to an
/// async fn returning `(Arc<dyn CasStore>, guard)`.
#[macro_export]
macro_rules! cas_conformance_tests {
    ($setup:path) => {
        $crate::cas_conformance_tests!(@cases $setup,
            get_of_an_absent_key_is_none,
            create_then_get_returns_the_value_and_version,
            a_second_create_conflicts_and_keeps_the_first_value,
            a_matching_replace_succeeds_and_changes_the_version,
            a_stale_version_conflicts,
            replacing_an_absent_key_conflicts,
            every_write_changes_the_version,
            delete_needs_the_current_version,
            a_recreated_key_never_repeats_an_old_version,
            values_round_trip_byte_for_byte,
            list_returns_the_keys_under_a_prefix_sorted,
            invalid_keys_are_rejected,
            racing_creates_have_exactly_one_winner,
            racing_replacements_have_exactly_one_winner_per_round,
        );
    };
    (@cases $setup:path, $($case:ident),+ $(,)?) => {
        $(
            #[test]
            fn $case() {
                $crate::conformance::run($setup, $crate::conformance::$case);
            }
        )+
    };
}

/// Every case in order, for backends that prefer a single test.
pub async fn run_all(store: Arc<dyn CasStore>) {
    get_of_an_absent_key_is_none(store.clone()).await;
    create_then_get_returns_the_value_and_version(store.clone()).await;
    a_second_create_conflicts_and_keeps_the_first_value(store.clone()).await;
    a_matching_replace_succeeds_and_changes_the_version(store.clone()).await;
    a_stale_version_conflicts(store.clone()).await;
    replacing_an_absent_key_conflicts(store.clone()).await;
    every_write_changes_the_version(store.clone()).await;
    delete_needs_the_current_version(store.clone()).await;
    a_recreated_key_never_repeats_an_old_version(store.clone()).await;
    values_round_trip_byte_for_byte(store.clone()).await;
    list_returns_the_keys_under_a_prefix_sorted(store.clone()).await;
    invalid_keys_are_rejected(store.clone()).await;
    racing_creates_have_exactly_one_winner(store.clone()).await;
    racing_replacements_have_exactly_one_winner_per_round(store).await;
}

/// A fresh prefix per case, so that runs against a shared bucket never meet.
fn namespace(case: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    format!("conformance/{case}-{:016x}", hasher.finish())
}

fn key(ns: &str, name: &str) -> CasKey {
    CasKey::new(format!("{ns}/{name}")).expect("conformance keys are valid")
}

fn assert_conflict<T: std::fmt::Debug>(result: Result<T, CasError>, what: &str) {
    match result {
        Err(CasError::Conflict { .. }) => {}
        other => panic!("{what}: expected a conflict, got {other:?}"),
    }
}

async fn value_of(store: &dyn CasStore, key: &CasKey) -> Option<(Vec<u8>, Version)> {
    store
        .get(key)
        .await
        .expect("get succeeds")
        .map(|v| (v.value, v.version))
}

pub async fn get_of_an_absent_key_is_none(store: Arc<dyn CasStore>) {
    let k = key(&namespace("absent"), "nothing.json");
    assert_eq!(value_of(&*store, &k).await, None);
}

pub async fn create_then_get_returns_the_value_and_version(store: Arc<dyn CasStore>) {
    let k = key(&namespace("create"), "a.json");
    let version = store
        .put_if_absent(&k, b"{\"a\":1}".to_vec())
        .await
        .expect("create");
    assert_eq!(
        value_of(&*store, &k).await,
        Some((b"{\"a\":1}".to_vec(), version))
    );
}

pub async fn a_second_create_conflicts_and_keeps_the_first_value(store: Arc<dyn CasStore>) {
    let k = key(&namespace("create-twice"), "a.json");
    let version = store
        .put_if_absent(&k, b"first".to_vec())
        .await
        .expect("create");
    assert_conflict(
        store.put_if_absent(&k, b"second".to_vec()).await,
        "second create",
    );
    assert_eq!(
        value_of(&*store, &k).await,
        Some((b"first".to_vec(), version))
    );
}

pub async fn a_matching_replace_succeeds_and_changes_the_version(store: Arc<dyn CasStore>) {
    let k = key(&namespace("replace"), "a.json");
    let v1 = store
        .put_if_absent(&k, b"one".to_vec())
        .await
        .expect("create");
    let v2 = store
        .put_if_match(&k, b"two".to_vec(), &v1)
        .await
        .expect("replace");
    assert_ne!(v1, v2, "a replace must change the version");
    assert_eq!(value_of(&*store, &k).await, Some((b"two".to_vec(), v2)));
}

pub async fn a_stale_version_conflicts(store: Arc<dyn CasStore>) {
    let k = key(&namespace("stale"), "a.json");
    let v1 = store
        .put_if_absent(&k, b"one".to_vec())
        .await
        .expect("create");
    let v2 = store
        .put_if_match(&k, b"two".to_vec(), &v1)
        .await
        .expect("replace");
    assert_conflict(
        store.put_if_match(&k, b"three".to_vec(), &v1).await,
        "stale replace",
    );
    assert_eq!(value_of(&*store, &k).await, Some((b"two".to_vec(), v2)));
}

pub async fn replacing_an_absent_key_conflicts(store: Arc<dyn CasStore>) {
    let ns = namespace("replace-absent");
    let (k, other) = (key(&ns, "a.json"), key(&ns, "b.json"));
    let version = store
        .put_if_absent(&other, b"x".to_vec())
        .await
        .expect("create");
    assert_conflict(
        store.put_if_match(&k, b"y".to_vec(), &version).await,
        "replace of absent key",
    );
    assert_eq!(value_of(&*store, &k).await, None);
}

pub async fn every_write_changes_the_version(store: Arc<dyn CasStore>) {
    let k = key(&namespace("versions"), "a.json");
    let mut seen = vec![store
        .put_if_absent(&k, b"same".to_vec())
        .await
        .expect("create")];
    for _ in 0..5 {
        let last = seen.last().expect("one version").clone();
        let next = store
            .put_if_match(&k, b"same".to_vec(), &last)
            .await
            .expect("replace");
        assert!(!seen.contains(&next), "version {next} repeated");
        seen.push(next);
    }
}

pub async fn delete_needs_the_current_version(store: Arc<dyn CasStore>) {
    let k = key(&namespace("delete"), "a.json");
    let v1 = store
        .put_if_absent(&k, b"one".to_vec())
        .await
        .expect("create");
    let v2 = store
        .put_if_match(&k, b"two".to_vec(), &v1)
        .await
        .expect("replace");
    assert_conflict(store.delete_if_match(&k, &v1).await, "stale delete");
    assert!(
        value_of(&*store, &k).await.is_some(),
        "a stale delete removed the key"
    );
    store.delete_if_match(&k, &v2).await.expect("delete");
    assert_eq!(value_of(&*store, &k).await, None);
    assert_conflict(store.delete_if_match(&k, &v2).await, "delete of absent key");
}

/// The ABA case: a holder of a version from before a delete must not be able to
/// overwrite the key's next incarnation.
pub async fn a_recreated_key_never_repeats_an_old_version(store: Arc<dyn CasStore>) {
    let k = key(&namespace("recreate"), "a.json");
    let old = store
        .put_if_absent(&k, b"v".to_vec())
        .await
        .expect("create");
    store.delete_if_match(&k, &old).await.expect("delete");
    let new = store
        .put_if_absent(&k, b"v".to_vec())
        .await
        .expect("create again");
    assert_ne!(old, new, "a re-created key repeated its old version");
    assert_conflict(
        store.put_if_match(&k, b"w".to_vec(), &old).await,
        "write with pre-delete version",
    );
}

pub async fn values_round_trip_byte_for_byte(store: Arc<dyn CasStore>) {
    let ns = namespace("bytes");
    let binary: Vec<u8> = (0..=255u8).chain(b"\n\r\nend\n".iter().copied()).collect();
    for (name, value) in [
        ("empty", Vec::new()),
        ("binary", binary),
        ("newline", b"\n".to_vec()),
    ] {
        let k = key(&ns, name);
        let version = store
            .put_if_absent(&k, value.clone())
            .await
            .expect("create");
        assert_eq!(
            value_of(&*store, &k).await,
            Some((value, version)),
            "value of {name}"
        );
    }
}

pub async fn list_returns_the_keys_under_a_prefix_sorted(store: Arc<dyn CasStore>) {
    let ns = namespace("list");
    let names = [
        "r/dc1/2.json",
        "r/dc1/0.json",
        "r/dc1/10.json",
        "r/dc2/0.json",
        "leases/x.json",
    ];
    for name in names {
        store
            .put_if_absent(&key(&ns, name), b"{}".to_vec())
            .await
            .expect("create");
    }
    let listed = |prefix: String| {
        let store = store.clone();
        async move {
            let keys = store.list(&prefix).await.expect("list");
            keys.into_iter().map(|k| k.to_string()).collect::<Vec<_>>()
        }
    };
    let full = |names: &[&str]| {
        names
            .iter()
            .map(|n| format!("{ns}/{n}"))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        listed(format!("{ns}/r/dc1/")).await,
        full(&["r/dc1/0.json", "r/dc1/10.json", "r/dc1/2.json"])
    );
    assert_eq!(
        listed(format!("{ns}/r/dc1/1")).await,
        full(&["r/dc1/10.json"])
    );
    assert_eq!(
        listed(format!("{ns}/r/dc")).await,
        full(&[
            "r/dc1/0.json",
            "r/dc1/10.json",
            "r/dc1/2.json",
            "r/dc2/0.json"
        ])
    );
    assert_eq!(listed(format!("{ns}/")).await.len(), names.len());
    assert_eq!(listed(format!("{ns}/nothing/")).await, Vec::<String>::new());
}

pub async fn invalid_keys_are_rejected(store: Arc<dyn CasStore>) {
    for bad in [
        "",
        "/etc/passwd",
        "a//b",
        "a/../b",
        "..",
        "a/./b",
        "a/",
        "a\\b",
        ".cas/x",
        "a/.lock",
    ] {
        assert!(
            matches!(CasKey::new(bad), Err(CasError::InvalidKey { .. })),
            "key {bad:?} was accepted"
        );
    }
    for bad in ["../", "/abs", "a//", "a/../"] {
        assert!(
            matches!(store.list(bad).await, Err(CasError::InvalidKey { .. })),
            "list prefix {bad:?} was accepted"
        );
    }
}

/// Tasks released together by a barrier, so the creates really overlap.
pub async fn racing_creates_have_exactly_one_winner(store: Arc<dyn CasStore>) {
    const TASKS: usize = 16;
    let k = key(&namespace("race-create"), "a.json");
    let barrier = Arc::new(Barrier::new(TASKS));
    let tasks: Vec<_> = (0..TASKS)
        .map(|i| {
            let (store, k, barrier) = (store.clone(), k.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                store
                    .put_if_absent(&k, format!("{i}").into_bytes())
                    .await
                    .map(|v| (i, v))
            })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        match task.await.expect("task runs") {
            Ok(win) => winners.push(win),
            Err(e) => assert!(e.is_conflict(), "a losing create failed with {e:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "creates won: {winners:?}");
    let (i, version) = winners.pop().expect("one winner");
    assert_eq!(
        value_of(&*store, &k).await,
        Some((format!("{i}").into_bytes(), version))
    );
}

pub async fn racing_replacements_have_exactly_one_winner_per_round(store: Arc<dyn CasStore>) {
    const TASKS: usize = 8;
    const ROUNDS: usize = 10;
    let k = key(&namespace("race-replace"), "a.json");
    let mut version = store
        .put_if_absent(&k, b"start".to_vec())
        .await
        .expect("create");
    for round in 0..ROUNDS {
        let barrier = Arc::new(Barrier::new(TASKS));
        let tasks: Vec<_> = (0..TASKS)
            .map(|i| {
                let (store, k, barrier, expected) =
                    (store.clone(), k.clone(), barrier.clone(), version.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    let value = format!("{round}:{i}").into_bytes();
                    store
                        .put_if_match(&k, value.clone(), &expected)
                        .await
                        .map(|v| (value, v))
                })
            })
            .collect();
        let mut winners = Vec::new();
        for task in tasks {
            match task.await.expect("task runs") {
                Ok(win) => winners.push(win),
                Err(e) => assert!(e.is_conflict(), "a losing replace failed with {e:?}"),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: replaces won: {winners:?}");
        let (value, new_version) = winners.pop().expect("one winner");
        assert_eq!(
            value_of(&*store, &k).await,
            Some((value, new_version.clone()))
        );
        version = new_version;
    }
}
