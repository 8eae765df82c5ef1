//! The object store against its real backends: the conformance suite on the
//! filesystem and on S3 (a moto server), retries through injected faults, the
//! S3 compare-and-swap store against the topology crate's CAS suite, and the
//! errors a misconfigured store gives. One binary, so one moto server serves
//! every test (each test gets a bucket of its own).

mod cas_s3;
mod errors;
mod retries;
mod suite;

/// Runs each named case of `suite` against a fresh filesystem store and a fresh
/// S3 bucket on moto.
macro_rules! object_store_suite {
    ($($case:ident),+ $(,)?) => {
        mod filesystem {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let dir = tempfile::tempdir().expect("temp dir");
                    let store = anchises_backup::ObjectStore::filesystem(dir.path()).expect("store opens");
                    crate::suite::$case(store).await;
                }
            )+
        }
        mod s3 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let store = anchises_backup::testing::MotoServer::shared().store().await;
                    crate::suite::$case(store).await;
                }
            )+
        }
    };
}

object_store_suite!(
    put_then_get_returns_the_same_bytes,
    an_overwrite_replaces_the_object_and_its_etag,
    a_missing_object_is_not_found_everywhere,
    list_returns_the_keys_under_a_prefix_sorted_with_sizes,
    many_objects_list_across_pages_and_delete_in_batches,
    delete_removes_the_object_and_a_missing_one_is_fine,
    large_objects_stream_up_in_parts_and_back_down,
    files_up_to_the_threshold_go_up_in_one_streamed_put,
    keys_that_escape_the_root_are_rejected,
    uploading_a_missing_file_fails_without_retries,
);
