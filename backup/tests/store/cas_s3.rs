//! The topology crate's compare-and-swap conformance suite against S3
//! conditional writes on moto, one test per case plus the whole suite under a
//! bucket prefix; and the filesystem object store's CAS (the topology crate's
//! `FsCasStore`) through the same entry point.

use std::sync::Arc;

use anchises_backup::store::ObjectKey;
use anchises_backup::testing::{quick_retries, MotoServer};
use anchises_backup::ObjectStore;
use anchises_topology::{CasKey, CasStore};

async fn setup() -> (Arc<dyn CasStore>, ()) {
    let store = MotoServer::shared().store().await;
    (store.cas_store().expect("s3 cas store"), ())
}

anchises_topology::cas_conformance_tests!(setup);

async fn setup_under_a_prefix() -> (Arc<dyn CasStore>, ObjectStore) {
    let server = MotoServer::shared();
    let mut config = server.create_bucket().await;
    config.prefix = "anchises/prod".into();
    let store = ObjectStore::s3(&config)
        .await
        .unwrap()
        .with_retry_policy(quick_retries());
    (store.cas_store().unwrap(), store)
}

#[test]
fn the_whole_suite_passes_under_a_bucket_prefix() {
    anchises_topology::conformance::run(
        setup_under_a_prefix,
        anchises_topology::conformance::run_all,
    );
}

#[tokio::test]
async fn cas_documents_live_under_the_bucket_prefix() {
    let server = MotoServer::shared();
    let root_config = server.create_bucket().await;
    let prefixed_config = anchises_backup::store::S3Config {
        prefix: "anchises/prod".into(),
        ..root_config.clone()
    };
    let prefixed = ObjectStore::s3(&prefixed_config).await.unwrap();
    let root = ObjectStore::s3(&root_config).await.unwrap();

    let key = CasKey::new("orders/leases/repair.json").unwrap();
    prefixed
        .cas_store()
        .unwrap()
        .put_if_absent(&key, b"{}".to_vec())
        .await
        .unwrap();
    let in_prefix: Vec<_> = prefixed
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(
        in_prefix,
        vec![ObjectKey::new("orders/leases/repair.json").unwrap()]
    );
    let in_bucket: Vec<_> = root
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(
        in_bucket,
        vec![ObjectKey::new("anchises/prod/orders/leases/repair.json").unwrap()]
    );
}

async fn setup_filesystem() -> (Arc<dyn CasStore>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = ObjectStore::filesystem(dir.path()).unwrap();
    (store.cas_store().unwrap(), dir)
}

#[test]
fn the_filesystem_object_store_gives_a_conforming_cas_store() {
    anchises_topology::conformance::run(setup_filesystem, anchises_topology::conformance::run_all);
}
