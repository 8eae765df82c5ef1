//! The filesystem store against the shared conformance suite, plus what only a
//! filesystem can get wrong: torn reads, leftovers of crashed writers, layout.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anchises_topology::cas::{CasFuture, Version, Versioned};
use anchises_topology::{CasKey, CasStore, FsCasStore};
use tempfile::TempDir;

async fn setup() -> (Arc<dyn CasStore>, TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = FsCasStore::open(dir.path()).expect("store opens");
    (Arc::new(store), dir)
}

anchises_topology::cas_conformance_tests!(setup);

#[test]
fn the_whole_suite_also_runs_as_one_test() {
    anchises_topology::conformance::run(setup, anchises_topology::conformance::run_all);
}

async fn setup_without_fsync() -> (Arc<dyn CasStore>, TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = FsCasStore::open(dir.path())
        .expect("store opens")
        .without_fsync();
    (Arc::new(store), dir)
}

#[test]
fn the_store_without_fsync_keeps_the_same_contract() {
    anchises_topology::conformance::run(
        setup_without_fsync,
        anchises_topology::conformance::run_all,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_never_see_a_half_written_value() {
    let (store, _dir) = setup().await;
    let key = CasKey::new("torn/value").unwrap();
    // Values large enough that a non-atomic write would be caught mid-way.
    let value = |i: u8| vec![i; 256 * 1024];
    let mut version = store.put_if_absent(&key, value(0)).await.unwrap();
    let reader = {
        let (store, key) = (store.clone(), key.clone());
        tokio::spawn(async move {
            let mut reads = 0;
            for _ in 0..200 {
                let found = store.get(&key).await.unwrap().expect("key exists");
                let first = found.value[0];
                assert_eq!(found.value.len(), 256 * 1024, "short read");
                assert!(found.value.iter().all(|&b| b == first), "torn read");
                reads += 1;
            }
            reads
        })
    };
    for i in 1..=50u8 {
        version = store.put_if_match(&key, value(i), &version).await.unwrap();
    }
    assert_eq!(reader.await.unwrap(), 200);
}

#[tokio::test]
async fn values_live_at_their_key_path_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let key = CasKey::new("orders/leases/repair.json").unwrap();
    let version = {
        let store = FsCasStore::open(dir.path()).unwrap();
        store
            .put_if_absent(&key, b"{\"holder\":null}".to_vec())
            .await
            .unwrap()
    };
    let on_disk = std::fs::read_to_string(dir.path().join("orders/leases/repair.json")).unwrap();
    assert!(
        on_disk.ends_with("\n{\"holder\":null}"),
        "unexpected file: {on_disk:?}"
    );

    let reopened = FsCasStore::open(dir.path()).unwrap();
    let found = reopened.get(&key).await.unwrap().unwrap();
    assert_eq!(found.version, version);
    assert_eq!(reopened.list("").await.unwrap(), vec![key]);
}

#[tokio::test]
async fn stale_temp_files_of_a_crashed_writer_are_removed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    FsCasStore::open(dir.path()).unwrap();
    let tmp = dir.path().join(".cas/tmp");
    let (stale, fresh) = (tmp.join("dead.tmp"), tmp.join("busy.tmp"));
    std::fs::write(&stale, b"half").unwrap();
    std::fs::write(&fresh, b"half").unwrap();
    let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&stale)
        .unwrap()
        .set_modified(an_hour_ago)
        .unwrap();

    FsCasStore::open(dir.path()).unwrap();
    assert!(!stale.exists(), "a crashed writer's temp file was kept");
    assert!(
        fresh.exists(),
        "a temp file that may still be in use was removed"
    );
}

#[tokio::test]
async fn a_file_without_a_version_header_is_reported_corrupt() {
    let (store, dir) = setup().await;
    std::fs::create_dir_all(dir.path().join("x")).unwrap();
    std::fs::write(dir.path().join("x/raw.json"), b"{}").unwrap();
    let error = store
        .get(&CasKey::new("x/raw.json").unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(error, anchises_topology::CasError::Corrupt { .. }),
        "{error:?}"
    );
}

/// A broken store that ignores the expected version, to prove the suite can fail.
#[derive(Debug)]
struct IgnoresVersions(FsCasStore);

impl CasStore for IgnoresVersions {
    fn get<'a>(&'a self, key: &'a CasKey) -> CasFuture<'a, Option<Versioned>> {
        self.0.get(key)
    }
    fn put_if_absent<'a>(&'a self, key: &'a CasKey, value: Vec<u8>) -> CasFuture<'a, Version> {
        self.0.put_if_absent(key, value)
    }
    fn put_if_match<'a>(
        &'a self,
        key: &'a CasKey,
        value: Vec<u8>,
        _expected: &'a Version,
    ) -> CasFuture<'a, Version> {
        Box::pin(async move {
            let current = self.0.get(key).await?.expect("key exists").version;
            self.0.put_if_match(key, value, &current).await
        })
    }
    fn delete_if_match<'a>(&'a self, key: &'a CasKey, expected: &'a Version) -> CasFuture<'a, ()> {
        self.0.delete_if_match(key, expected)
    }
    fn list<'a>(&'a self, prefix: &'a str) -> CasFuture<'a, Vec<CasKey>> {
        self.0.list(prefix)
    }
}

async fn broken_setup() -> (Arc<dyn CasStore>, TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = FsCasStore::open(dir.path()).expect("store opens");
    (Arc::new(IgnoresVersions(store)), dir)
}

#[test]
#[should_panic(expected = "stale replace: expected a conflict")]
fn the_suite_catches_a_store_that_ignores_versions() {
    anchises_topology::conformance::run(
        broken_setup,
        anchises_topology::conformance::a_stale_version_conflicts,
    );
}

/// The trait works as a plain generic bound too, on the store or an `Arc` of it.
async fn create_and_read<S: CasStore + ?Sized>(store: &S, key: &CasKey) -> Vec<u8> {
    store.put_if_absent(key, b"generic".to_vec()).await.unwrap();
    store.get(key).await.unwrap().unwrap().value
}

#[tokio::test]
async fn the_store_is_usable_through_generics_and_arcs() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsCasStore::open(dir.path()).unwrap();
    assert_eq!(
        create_and_read(&store, &CasKey::new("g/a").unwrap()).await,
        b"generic"
    );
    let shared = Arc::new(store);
    assert_eq!(
        create_and_read(&shared, &CasKey::new("g/b").unwrap()).await,
        b"generic"
    );
}
