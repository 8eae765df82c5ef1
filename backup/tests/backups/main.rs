//! Snapshot backups, incrementals, dedup, verification, purge and crash
//! resumption against both real stores (the filesystem and S3 on moto), on
//! SSTable-shaped files laid out as Cassandra lays them out. The same paths run
//! against a real Cassandra node in the integration tests.

mod cases;
mod restore_cases;

/// Runs each named case against a fresh filesystem store and a fresh S3
/// bucket on moto.
macro_rules! backup_suite {
    ($($case:ident),+ $(,)?) => {
        mod filesystem {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let dir = tempfile::tempdir().expect("temp dir");
                    let store = anchises_backup::ObjectStore::filesystem(dir.path())
                        .expect("store opens")
                        .with_retry_policy(anchises_backup::testing::quick_retries());
                    crate::run!($case, store);
                }
            )+
        }
        mod s3 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let store = anchises_backup::testing::MotoServer::shared().store().await;
                    crate::run!($case, store);
                }
            )+
        }
    };
}

/// Calls a case by name from whichever module has it.
#[macro_export]
macro_rules! run {
    ($case:ident, $store:expr) => {{
        #[allow(unused_imports)]
        use $crate::cases::*;
        #[allow(unused_imports)]
        use $crate::restore_cases::*;
        $case($store).await
    }};
}

backup_suite!(
    a_snapshot_backup_stores_every_file_and_the_manifest_last,
    a_second_backup_of_unchanged_data_uploads_nothing,
    verify_finds_a_deleted_and_a_corrupted_object,
    incrementals_are_logged_removed_and_reused_by_the_next_snapshot,
    an_interrupted_backup_resumes_without_uploading_finished_files,
    a_flaky_store_still_gets_every_object_right,
    a_file_vanishing_mid_backup_fails_it_without_a_manifest,
    purge_keeps_what_retention_keeps_and_sweeps_the_rest,
    a_changed_file_under_a_known_name_gets_its_own_object,
    plans_pick_the_backup_asked_for_and_only_the_tables_asked_for,
    a_backup_of_some_keyspaces_is_no_base_for_the_others,
    a_point_in_time_takes_incrementals_written_up_to_it,
    staging_verifies_every_file_and_resumes,
    a_manifest_entry_that_escapes_the_data_directory_is_refused,
    a_cancel_does_not_wait_for_the_throttle,
);
