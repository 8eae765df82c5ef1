//! What a misconfigured store says: a missing bucket is a clear error that is
//! not retried, an unreachable endpoint is retried a bounded number of times.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anchises_backup::store::{Faults, ObjectKey, RetryPolicy, StoreError};
use anchises_backup::testing::MotoServer;
use anchises_backup::ObjectStore;
use bytes::Bytes;

#[tokio::test]
async fn a_missing_bucket_is_a_clear_error_that_is_not_retried() {
    let faults = Arc::new(Faults::count_only());
    let config = MotoServer::shared().s3_config("no-such-bucket");
    let store = ObjectStore::s3(&config)
        .await
        .unwrap()
        .with_faults(faults.clone());
    let key = ObjectKey::new("a/b").unwrap();

    let error = store.get(&key).await.unwrap_err();
    assert!(matches!(error, StoreError::Permanent { .. }), "{error:?}");
    assert!(
        error.to_string().contains("bucket does not exist"),
        "{error}"
    );
    let error = store.list("a/").await.unwrap_err();
    assert!(
        error.to_string().contains("bucket does not exist"),
        "{error}"
    );
    let error = store.put(&key, Bytes::from_static(b"v")).await.unwrap_err();
    assert!(!error.is_retryable(), "{error:?}");
    assert_eq!(faults.attempts(), 3, "an error was retried");
}

#[tokio::test]
async fn wrong_credentials_are_a_clear_error_that_is_not_retried() {
    let server = MotoServer::start();
    let config = server.create_bucket().await;
    let key = ObjectKey::new("a/b").unwrap();
    let store = ObjectStore::s3(&config).await.unwrap();
    store.put(&key, Bytes::from_static(b"v")).await.unwrap();
    server.enforce_auth();
    let faults = Arc::new(Faults::count_only());
    let store = store.with_faults(faults.clone());

    let error = store.put(&key, Bytes::from_static(b"w")).await.unwrap_err();
    assert!(matches!(error, StoreError::Permanent { .. }), "{error:?}");
    assert!(
        error
            .to_string()
            .contains("s3 refused the credentials: InvalidAccessKeyId"),
        "{error}"
    );
    let error = store.list("a/").await.unwrap_err();
    assert!(error.to_string().contains("credentials"), "{error}");
    // A HEAD's 403 has no body to name the code.
    let error = store.head(&key).await.unwrap_err();
    assert!(!error.is_retryable(), "{error:?}");
    assert!(error.to_string().contains("access denied"), "{error}");
    assert_eq!(faults.attempts(), 3, "an error was retried");
}

#[tokio::test]
async fn an_unreachable_endpoint_is_retried_a_bounded_number_of_times() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut config = MotoServer::shared().s3_config("some-bucket");
    config.endpoint = Some(format!("http://127.0.0.1:{port}"));
    let faults = Arc::new(Faults::count_only());
    let store = ObjectStore::s3(&config)
        .await
        .unwrap()
        .with_faults(faults.clone())
        .with_retry_policy(RetryPolicy {
            max_attempts: 3,
            min_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(10),
            jitter: false,
        });
    let started = Instant::now();
    let error = store.list("").await.unwrap_err();
    assert!(error.is_retryable(), "{error:?}");
    assert!(
        error.to_string().contains("cannot reach the s3 endpoint"),
        "{error}"
    );
    assert_eq!(faults.attempts(), 3);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_invalid_configuration_is_rejected_before_any_request() {
    let mut config = MotoServer::shared().s3_config("bucket");
    config.part_size = 1024;
    let error = ObjectStore::s3(&config).await.unwrap_err();
    assert!(error.to_string().contains("5 MiB"), "{error}");
}
