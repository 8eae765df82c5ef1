//! The retry layer, exercised through injected faults on the real backends:
//! retryable failures are absorbed and counted, permanent ones are not retried,
//! the budget is bounded, cancellation stops the waiting, and a conditional
//! write whose answer was lost is still recognised as ours.

use std::sync::Arc;
use std::time::Duration;

use anchises_backup::store::{Faults, ObjectKey, RetryPolicy, StoreError};
use anchises_backup::testing::{quick_retries, MotoServer};
use anchises_backup::ObjectStore;
use anchises_topology::CasKey;
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

fn key(name: &str) -> ObjectKey {
    ObjectKey::new(name).unwrap()
}

async fn s3_with(faults: &Arc<Faults>) -> ObjectStore {
    MotoServer::shared()
        .store()
        .await
        .with_faults(faults.clone())
}

#[tokio::test]
async fn a_get_that_fails_twice_succeeds_on_the_third_attempt() {
    let faults = Arc::new(Faults::fail_first(2).only("get"));
    let store = s3_with(&faults).await;
    store
        .put(&key("a"), Bytes::from_static(b"value"))
        .await
        .unwrap();
    assert_eq!(
        store.get(&key("a")).await.unwrap(),
        Bytes::from_static(b"value")
    );
    assert_eq!((faults.attempts(), faults.injected()), (3, 2));
}

#[tokio::test]
async fn the_filesystem_store_retries_the_same_way() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(Faults::fail_first(3).only("put"));
    let store = ObjectStore::filesystem(dir.path())
        .unwrap()
        .with_retry_policy(quick_retries())
        .with_faults(faults.clone());
    store
        .put(&key("a/b"), Bytes::from_static(b"v"))
        .await
        .unwrap();
    assert_eq!(faults.attempts(), 4);
    assert_eq!(std::fs::read(dir.path().join("a/b")).unwrap(), b"v");
}

#[tokio::test]
async fn a_permanent_error_is_not_retried() {
    let faults = Arc::new(Faults::fail_first(10).permanent());
    let store = s3_with(&faults).await;
    let error = store
        .put(&key("a"), Bytes::from_static(b"v"))
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Permanent { .. }), "{error:?}");
    assert_eq!(faults.attempts(), 1);
}

#[tokio::test]
async fn a_missing_object_is_not_retried() {
    let faults = Arc::new(Faults::count_only());
    let store = s3_with(&faults).await;
    assert!(store.get(&key("nothing")).await.unwrap_err().is_not_found());
    assert_eq!(faults.attempts(), 1);
}

#[tokio::test]
async fn retries_stop_after_the_attempt_budget_with_the_last_error() {
    let faults = Arc::new(Faults::fail_first(100));
    let store = s3_with(&faults).await.with_retry_policy(RetryPolicy {
        max_attempts: 4,
        ..quick_retries()
    });
    let error = store.head(&key("a")).await.unwrap_err();
    assert!(error.is_retryable(), "{error:?}");
    assert_eq!(faults.attempts(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_random_fraction_of_failures_is_absorbed() {
    let faults = Arc::new(Faults::fail_fraction(0.3, 7));
    let store = s3_with(&faults).await.with_retry_policy(RetryPolicy {
        max_attempts: 20,
        ..quick_retries()
    });
    for i in 0..40 {
        let k = key(&format!("f/{i}"));
        store.put(&k, Bytes::from(format!("{i}"))).await.unwrap();
        assert_eq!(store.get(&k).await.unwrap(), Bytes::from(format!("{i}")));
    }
    assert!(
        faults.injected() > 5,
        "too few faults to mean anything: {}",
        faults.injected()
    );
    // Every failed attempt was followed by exactly one more.
    assert_eq!(faults.attempts(), 80 + faults.injected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_parts_are_retried_one_by_one_without_rereading_the_source() {
    let faults = Arc::new(Faults::fail_first(2).only("put part"));
    let store = s3_with(&faults).await;
    let value: Vec<u8> = (0..11 * 1024 * 1024)
        .map(|i: u32| (i % 251) as u8)
        .collect();
    let mut reader = &value[..];
    store
        .put_reader(&key("big"), &mut reader, None)
        .await
        .unwrap();
    // Three parts, two of their attempts failed.
    assert_eq!((faults.attempts(), faults.injected()), (5, 2));
    assert!(store.get(&key("big")).await.unwrap() == value);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_multipart_upload_whose_answer_was_lost_is_done() {
    // S3 completed the upload, the answer was lost: the retry completes it
    // again (moto) or finds it gone and the object it made (S3).
    let faults = Arc::new(
        Faults::fail_first(1)
            .after_request()
            .only("complete upload"),
    );
    let store = s3_with(&faults).await;
    let value: Vec<u8> = (0..11 * 1024 * 1024)
        .map(|i: u32| (i % 241) as u8)
        .collect();
    let mut reader = &value[..];
    store
        .put_reader(&key("completed"), &mut reader, None)
        .await
        .unwrap();
    assert_eq!((faults.attempts(), faults.injected()), (2, 1));
    assert!(store.get(&key("completed")).await.unwrap() == value);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_put_is_retried_with_a_fresh_stream() {
    // One attempt fails, before it is sent or after S3 took it (its answer
    // lost); the second stores the object from a new stream.
    let value = Bytes::from(
        (0..7 * 1024 * 1024)
            .map(|i: u32| (i % 253) as u8)
            .collect::<Vec<_>>(),
    );
    for (faults, name) in [
        (Faults::fail_first(1).only("put"), "streamed"),
        (Faults::fail_first(1).after_request().only("put"), "lost"),
    ] {
        let faults = Arc::new(faults);
        let store = s3_with(&faults).await;
        let streams = std::sync::atomic::AtomicU32::new(0);
        store
            .put_stream(&key(name), value.len() as u64, || {
                streams.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let body = value.clone();
                async move { futures::stream::iter([Ok(body)]) }
            })
            .await
            .unwrap();
        assert_eq!((faults.attempts(), faults.injected()), (2, 1), "{name}");
        assert_eq!(
            streams.load(std::sync::atomic::Ordering::Relaxed),
            2,
            "{name}"
        );
        assert!(store.get(&key(name)).await.unwrap() == value, "{name}");
    }
}

#[tokio::test]
async fn cancellation_stops_a_request_that_is_waiting_to_retry() {
    let faults = Arc::new(Faults::fail_first(100));
    let cancel = CancellationToken::new();
    let store = s3_with(&faults)
        .await
        .with_retry_policy(RetryPolicy {
            max_attempts: 100,
            min_delay: Duration::from_secs(30),
            max_delay: Duration::from_secs(30),
            jitter: false,
        })
        .with_cancellation(cancel.clone());
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        trigger.cancel();
    });
    let started = std::time::Instant::now();
    let error = store.get(&key("a")).await.unwrap_err();
    assert!(matches!(error, StoreError::Cancelled { .. }), "{error:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(faults.attempts(), 1);
}

#[tokio::test]
async fn a_conditional_write_whose_answer_was_lost_is_still_ours() {
    let faults = Arc::new(Faults::fail_first(1).after_request().only("cas put"));
    let store = s3_with(&faults).await;
    let cas = store.cas_store().unwrap();
    let k = CasKey::new("leases/repair.json").unwrap();

    // The first attempt creates the object, its answer is "lost", and the retry
    // meets its own write: the create must still succeed.
    let v1 = cas
        .put_if_absent(&k, b"mine".to_vec())
        .await
        .expect("create");
    assert_eq!(faults.attempts(), 2);
    let found = cas.get(&k).await.unwrap().unwrap();
    assert_eq!(
        (found.value, found.version.clone()),
        (b"mine".to_vec(), v1.clone())
    );

    // Someone else's write is not mistaken for ours.
    assert!(cas
        .put_if_absent(&k, b"theirs".to_vec())
        .await
        .unwrap_err()
        .is_conflict());
    let v2 = cas.put_if_match(&k, b"next".to_vec(), &v1).await.unwrap();
    assert!(cas
        .put_if_match(&k, b"late".to_vec(), &v1)
        .await
        .unwrap_err()
        .is_conflict());
    cas.delete_if_match(&k, &v2).await.unwrap();
    assert!(cas.get(&k).await.unwrap().is_none());
}

#[tokio::test]
async fn a_conditional_delete_whose_answer_was_lost_is_done() {
    let faults = Arc::new(Faults::fail_first(1).after_request().only("cas delete"));
    let store = s3_with(&faults).await;
    let cas = store.cas_store().unwrap();
    let k = CasKey::new("plans/p.json").unwrap();
    let v = cas.put_if_absent(&k, b"plan".to_vec()).await.unwrap();
    cas.delete_if_match(&k, &v).await.expect("delete");
    assert_eq!(faults.attempts(), 2);
    assert!(cas.get(&k).await.unwrap().is_none());
}

#[tokio::test]
async fn a_raw_file_above_the_threshold_streams_its_parts_and_a_part_sent_again_counts_once() {
    use anchises_backup::manifest::Compression;
    use anchises_backup::upload::{upload_file, Throttle};
    use std::sync::atomic::{AtomicU64, Ordering};

    // The part after S3 took it is failed twice: sent again from its range.
    let faults = Arc::new(Faults::fail_first(2).only("put part").after_request());
    let store = s3_with(&faults).await;
    // Above the test threshold (10 MiB) in parts of 5 MiB: three, the last short.
    let value: Vec<u8> = (0..12 * 1024 * 1024 + 777u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("nb-1-big-Data.db");
    std::fs::write(&source, &value).unwrap();
    let progress = Arc::new(AtomicU64::new(0));

    let uploaded = upload_file(
        &store,
        &key("ranged/nb-1-big-Data.db"),
        &source,
        Compression::None,
        3,
        &Throttle::unlimited(),
        Some(progress.clone()),
    )
    .await
    .unwrap();

    assert_eq!(uploaded.hash, blake3::hash(&value).to_hex().to_string());
    assert_eq!(uploaded.size, value.len() as u64);
    assert_eq!(uploaded.stored_size, value.len() as u64);
    assert_eq!(faults.injected(), 2);
    assert_eq!(progress.load(Ordering::Relaxed), value.len() as u64);
    let etag = store
        .head(&key("ranged/nb-1-big-Data.db"))
        .await
        .unwrap()
        .etag;
    assert!(
        etag.trim_matches('"').ends_with("-3"),
        "not 3 parts: {etag}"
    );
    assert!(
        store.get(&key("ranged/nb-1-big-Data.db")).await.unwrap() == value,
        "the stored object differs from the file"
    );
}

#[tokio::test]
async fn a_raw_file_that_shrinks_while_its_parts_go_up_fails_and_stores_nothing() {
    use anchises_backup::manifest::Compression;
    use anchises_backup::upload::{upload_file, Throttle};

    // The first parts S3 takes are failed; as soon as one is, the file loses
    // half of its bytes, so the parts sent again (or the hash) find it changed.
    let faults = Arc::new(Faults::fail_first(3).only("put part").after_request());
    let store = s3_with(&faults).await;
    let value = vec![7u8; 12 * 1024 * 1024];
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("nb-2-big-Data.db");
    std::fs::write(&source, &value).unwrap();
    let shrink = {
        let source = source.clone();
        tokio::spawn(async move {
            loop {
                if faults.injected() > 0 {
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open(&source)
                        .unwrap()
                        .set_len(6 * 1024 * 1024)
                        .unwrap();
                    return;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    let error = upload_file(
        &store,
        &key("ranged/nb-2-big-Data.db"),
        &source,
        Compression::None,
        3,
        &Throttle::unlimited(),
        None,
    )
    .await
    .unwrap_err();
    shrink.await.unwrap();
    assert!(
        error.to_string().contains("changed while being read"),
        "{error}"
    );
    assert!(store
        .get(&key("ranged/nb-2-big-Data.db"))
        .await
        .unwrap_err()
        .is_not_found());
}
