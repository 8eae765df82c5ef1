//! The object-store conformance cases: each takes a fresh store and panics on
//! the first violation. `main.rs` runs every case on both backends.

use std::collections::BTreeMap;

use anchises_backup::store::{check_prefix, ObjectKey, StoreError};
use anchises_backup::ObjectStore;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

fn key(name: &str) -> ObjectKey {
    ObjectKey::new(name).expect("valid key")
}

/// Bytes that differ at every offset, so a misplaced part is caught.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[seed as usize % 4] ^ seed)
        .collect()
}

pub async fn put_then_get_returns_the_same_bytes(store: ObjectStore) {
    let binary: Vec<u8> = (0..=255u8).collect();
    for (name, value) in [
        ("o/empty", Vec::new()),
        ("o/binary", binary),
        ("o/text.json", b"{\"a\":1}\n".to_vec()),
    ] {
        store
            .put(&key(name), Bytes::from(value.clone()))
            .await
            .expect("put");
        assert_eq!(store.get(&key(name)).await.expect("get"), value, "{name}");
        assert_eq!(
            store.head(&key(name)).await.expect("head").size,
            value.len() as u64
        );
    }
}

pub async fn an_overwrite_replaces_the_object_and_its_etag(store: ObjectStore) {
    let k = key("over/write");
    store.put(&k, Bytes::from_static(b"first")).await.unwrap();
    let first = store.head(&k).await.unwrap();
    // The filesystem etag is the modification time; make sure it can tick.
    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    store.put(&k, Bytes::from_static(b"second!")).await.unwrap();
    let second = store.head(&k).await.unwrap();
    assert_eq!(store.get(&k).await.unwrap(), Bytes::from_static(b"second!"));
    assert_eq!(second.size, 7);
    assert_ne!(
        first.etag, second.etag,
        "the etag did not change on overwrite"
    );
    assert_eq!(store.list("over/").await.unwrap().len(), 1);
}

pub async fn a_missing_object_is_not_found_everywhere(store: ObjectStore) {
    let k = key("missing/object");
    let not_found = |r: Result<_, StoreError>| matches!(r, Err(StoreError::NotFound { .. }));
    assert!(not_found(store.get(&k).await.map(drop)), "get");
    assert!(not_found(store.head(&k).await.map(drop)), "head");
    let mut sink = Vec::new();
    assert!(
        not_found(store.get_to_writer(&k, &mut sink).await.map(drop)),
        "get_to_writer"
    );
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("target");
    assert!(
        not_found(store.get_to_file(&k, &target).await.map(drop)),
        "get_to_file"
    );
    assert!(!target.exists());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "a temp file was left"
    );
}

pub async fn list_returns_the_keys_under_a_prefix_sorted_with_sizes(store: ObjectStore) {
    let names = [
        "r/dc1/2.json",
        "r/dc1/0.json",
        "r/dc1/10.json",
        "r/dc2/0.json",
        "leases/x.json",
    ];
    for (i, name) in names.iter().enumerate() {
        store
            .put(&key(name), Bytes::from(vec![b'x'; i]))
            .await
            .unwrap();
    }
    let listed = |prefix: &'static str| {
        let store = store.clone();
        async move {
            store
                .list(prefix)
                .await
                .expect("list")
                .into_iter()
                .map(|o| (o.key.to_string(), o.size))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        listed("r/dc1/").await,
        vec![
            ("r/dc1/0.json".into(), 1),
            ("r/dc1/10.json".into(), 2),
            ("r/dc1/2.json".into(), 0)
        ]
    );
    assert_eq!(
        listed("r/dc1/1").await,
        vec![("r/dc1/10.json".to_string(), 2)]
    );
    assert_eq!(listed("r/dc").await.len(), 4);
    assert_eq!(listed("").await.len(), names.len());
    assert_eq!(listed("nothing/").await, Vec::new());
}

pub async fn many_objects_list_across_pages_and_delete_in_batches(store: ObjectStore) {
    // More than one S3 listing page and one DeleteObjects batch (1,000 each).
    const COUNT: usize = 1_005;
    let keys: Vec<ObjectKey> = (0..COUNT).map(|i| key(&format!("many/{i:05}"))).collect();
    futures::stream::iter(keys.iter().cloned())
        .map(|k| {
            let store = store.clone();
            async move { store.put(&k, Bytes::from_static(b"x")).await }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await
        .expect("puts");
    store
        .put(&key("keep/me"), Bytes::from_static(b"k"))
        .await
        .unwrap();
    let listed: Vec<ObjectKey> = store
        .list("many/")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(listed, keys);
    store.delete_many(&keys).await.expect("delete_many");
    assert!(store.list("many/").await.unwrap().is_empty());
    assert_eq!(
        store.list("").await.unwrap().len(),
        1,
        "an unrelated object was deleted"
    );
}

pub async fn delete_removes_the_object_and_a_missing_one_is_fine(store: ObjectStore) {
    let k = key("d/e/l");
    store.put(&k, Bytes::from_static(b"x")).await.unwrap();
    store.delete(&k).await.expect("delete");
    assert!(store.get(&k).await.unwrap_err().is_not_found());
    store.delete(&k).await.expect("deleting a missing object");
    store
        .delete_many(&[k.clone(), key("never/was")])
        .await
        .expect("delete_many of missing keys");
    store
        .delete_many(&[])
        .await
        .expect("delete_many of nothing");
    assert!(store.list("d/").await.unwrap().is_empty());
}

pub async fn large_objects_stream_up_in_parts_and_back_down(store: ObjectStore) {
    // Two and a bit S3 minimum parts (5 MiB), so the last part is short.
    let value = pattern(2 * 5 * 1024 * 1024 + 12_345, 3);
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source.db");
    std::fs::write(&source, &value).unwrap();

    let from_file = key("big/from-file");
    assert_eq!(
        store.put_file(&from_file, &source).await.unwrap(),
        value.len() as u64
    );
    let from_reader = key("big/from-reader");
    let mut reader = &value[..];
    assert_eq!(
        store
            .put_reader(&from_reader, &mut reader, None)
            .await
            .unwrap(),
        value.len() as u64
    );

    for k in [&from_file, &from_reader] {
        let meta = store.head(k).await.unwrap();
        assert_eq!(meta.size, value.len() as u64);
        if store.is_s3() {
            // A multipart etag is `"<md5 of part md5s>-<parts>"`.
            assert!(
                meta.etag.trim_matches('"').ends_with("-3"),
                "not a 3-part upload: {}",
                meta.etag
            );
        }
        let target = dir.path().join("downloaded.db");
        assert_eq!(
            store.get_to_file(k, &target).await.unwrap(),
            value.len() as u64
        );
        assert!(
            std::fs::read(&target).unwrap() == value,
            "file download differs"
        );
        let mut sink = Vec::new();
        store.get_to_writer(k, &mut sink).await.unwrap();
        assert!(sink == value, "streamed download differs");
        assert!(store.get(k).await.unwrap() == value, "get differs");
    }
    let leftovers: BTreeMap<_, _> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| (e.unwrap().file_name(), ()))
        .collect();
    assert_eq!(leftovers.len(), 2, "temp files left: {leftovers:?}");

    // A size hint past 10,000 parts of the configured size makes the parts
    // larger: two instead of three.
    if store.is_s3() {
        let hinted = key("big/hinted");
        let hint = 10_001 * 5 * 1024 * 1024;
        assert_eq!(
            store
                .put_reader(&hinted, &mut &value[..], Some(hint))
                .await
                .unwrap(),
            value.len() as u64
        );
        let etag = store.head(&hinted).await.unwrap().etag;
        assert!(
            etag.trim_matches('"').ends_with("-2"),
            "not 2 parts: {etag}"
        );
        assert!(
            store.get(&hinted).await.unwrap() == value,
            "hinted upload differs"
        );
    }

    // A small object through the streaming path is a single put.
    let small = key("big/small");
    store
        .put_reader(&small, &mut &b"tiny"[..], None)
        .await
        .unwrap();
    assert_eq!(
        store.get(&small).await.unwrap(),
        Bytes::from_static(b"tiny")
    );
}

pub async fn files_up_to_the_threshold_go_up_in_one_streamed_put(store: ObjectStore) {
    // Above one part (5 MiB), below the test threshold of two.
    let value = pattern(7 * 1024 * 1024 + 3, 5);
    let size = value.len() as u64;
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source.db");
    std::fs::write(&source, &value).unwrap();
    assert_eq!(store.streams_put(size), store.is_s3());

    let from_file = key("streamed/from-file");
    assert_eq!(store.put_file(&from_file, &source).await.unwrap(), size);
    let meta = store.head(&from_file).await.unwrap();
    assert_eq!(meta.size, size);
    if store.is_s3() {
        assert!(
            !meta.etag.contains('-'),
            "a multipart etag for a streamed put: {}",
            meta.etag
        );
    }
    assert!(store.get(&from_file).await.unwrap() == value, "get differs");

    // A stream in chunks of odd sizes.
    let chunks: Vec<std::io::Result<Bytes>> = value
        .chunks(100_003)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let from_stream = key("streamed/from-stream");
    store
        .put_stream(&from_stream, size, || {
            let chunks = chunks
                .iter()
                .map(|c| Ok(c.as_ref().unwrap().clone()))
                .collect::<Vec<_>>();
            async move { futures::stream::iter(chunks) }
        })
        .await
        .unwrap();
    assert!(
        store.get(&from_stream).await.unwrap() == value,
        "streamed put differs"
    );

    // A stream that ends short of its size, or fails, stores nothing: an
    // object already under the key stays as it was.
    let short = key("streamed/short");
    store
        .put(&short, Bytes::from_static(b"before"))
        .await
        .unwrap();
    let error = store
        .put_stream(&short, size, || async {
            futures::stream::iter(vec![Ok(Bytes::from_static(b"not all of it"))])
        })
        .await
        .unwrap_err();
    assert_eq!(
        store.get(&short).await.unwrap(),
        Bytes::from_static(b"before"),
        "a short stream was stored ({error})"
    );
    let failed = key("streamed/failed");
    let error = store
        .put_stream(&failed, size, || async {
            futures::stream::iter(vec![
                Ok(Bytes::from_static(b"some bytes, then")),
                Err(std::io::Error::other("the source broke")),
            ])
        })
        .await
        .unwrap_err();
    assert!(
        store.get(&failed).await.unwrap_err().is_not_found(),
        "a failed stream was stored ({error})"
    );
}

pub async fn keys_that_escape_the_root_are_rejected(store: ObjectStore) {
    for bad in [
        "",
        "/etc/passwd",
        "a//b",
        "a/../b",
        "..",
        "a/./b",
        "a/",
        "a\\b",
        ".tmp/x",
    ] {
        assert!(
            matches!(ObjectKey::new(bad), Err(StoreError::InvalidKey { .. })),
            "key {bad:?} was accepted"
        );
    }
    for bad in ["../", "/abs", "a//", "a/../"] {
        assert!(check_prefix(bad).is_err());
        assert!(
            matches!(store.list(bad).await, Err(StoreError::InvalidKey { .. })),
            "list prefix {bad:?} was accepted"
        );
    }
}

pub async fn uploading_a_missing_file_fails_without_retries(store: ObjectStore) {
    let error = store
        .put_file(&key("x/y"), std::path::Path::new("/nonexistent/file.db"))
        .await
        .unwrap_err();
    assert!(!error.is_retryable(), "{error:?}");
    assert!(store.get(&key("x/y")).await.unwrap_err().is_not_found());
}
