use anchises_backup::files::Progress;
use anchises_backup::manifest::{BackupId, Compression};
use anchises_backup::restore::{
    links, plan_slot, stage, staged_path, synced_marker, Point, Selection, SlotPlan,
};
use anchises_backup::upload::Throttle;
use anchises_backup::{BackupError, ObjectStore};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::cases::{back_up, back_up_keyspaces, slot, Node, T1, T2};

fn all() -> Selection {
    Selection::default()
}

pub async fn plans_pick_the_backup_asked_for_and_only_the_tables_asked_for(store: ObjectStore) {
    let node = Node::new();
    node.write_sstable(T1, 1, 100_000);
    node.write_sstable(T2, 1, 50_000);
    let backups = node.backups(&store);
    let (first, _) = back_up(&backups, &node, "a").await.unwrap();
    node.write_sstable(T1, 2, 100_000);
    let (second, _) = back_up(&backups, &node, "b").await.unwrap();

    let latest = plan_slot(&backups.catalog, &slot(), &Point::Latest, &all())
        .await
        .unwrap();
    assert_eq!(latest.base, second.backup_id);
    assert_eq!(latest.files.len(), 12);
    assert_eq!(latest.tables, vec!["ks1.events", "ks2.users"]);
    let by_id = plan_slot(
        &backups.catalog,
        &slot(),
        &Point::Backup(first.backup_id.clone()),
        &all(),
    )
    .await
    .unwrap();
    assert_eq!(by_id.files.len(), 8);
    let only = Selection {
        tables: vec!["ks2.users".into()],
        ..Selection::default()
    };
    let plan = plan_slot(&backups.catalog, &slot(), &Point::Latest, &only)
        .await
        .unwrap();
    assert_eq!(plan.tables, vec!["ks2.users"]);
    assert_eq!(plan.files.len(), 4);
    assert_eq!(plan.bytes, plan.files.iter().map(|f| f.size).sum::<u64>());
    let before = OffsetDateTime::now_utc() - time::Duration::days(1);
    let err = plan_slot(&backups.catalog, &slot(), &Point::At(before), &all())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("no backup finished at or before"),
        "{err}"
    );
    let err = plan_slot(
        &backups.catalog,
        &slot(),
        &Point::Backup(BackupId::parse("20200101T000000Z-000000").unwrap()),
        &all(),
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("has no backup 20200101T000000Z-000000"),
        "{err}"
    );
}

/// A later backup of one keyspace is the base only for restores of that
/// keyspace: a restore of everything (or of the other keyspace, or of a
/// whole node) starts from the newest backup of every keyspace.
pub async fn a_backup_of_some_keyspaces_is_no_base_for_the_others(store: ObjectStore) {
    let node = Node::new();
    node.write_sstable(T1, 1, 100_000);
    node.write_sstable(T2, 1, 50_000);
    let backups = node.backups(&store);
    // With only a backup of ks2, nothing covers a restore of everything.
    back_up_keyspaces(&backups, &node, "ks2-first", &["ks2"])
        .await
        .unwrap();
    let err = plan_slot(&backups.catalog, &slot(), &Point::Latest, &all())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("has no backup of every keyspace the restore takes"),
        "{err}"
    );
    let (full, _) = back_up(&backups, &node, "full").await.unwrap();
    node.write_sstable(T2, 2, 50_000);
    let (partial, _) = back_up_keyspaces(&backups, &node, "ks2", &["ks2"])
        .await
        .unwrap();
    assert_eq!(partial.keyspaces, vec!["ks2"]);
    let base = |selection: Selection, point: Point| {
        let backups = backups.clone();
        async move {
            plan_slot(&backups.catalog, &slot(), &point, &selection)
                .await
                .map(|p| (p.base, p.tables))
        }
    };
    let ks = |k: &str| Selection {
        keyspaces: vec![k.to_string()],
        ..Selection::default()
    };
    let whole_node = Selection {
        include_system: true,
        ..Selection::default()
    };
    let now = Point::At(OffsetDateTime::now_utc());
    for point in [Point::Latest, now.clone()] {
        assert_eq!(
            base(all(), point.clone()).await.unwrap(),
            (
                full.backup_id.clone(),
                vec!["ks1.events".into(), "ks2.users".into()]
            )
        );
        assert_eq!(
            base(ks("ks1"), point.clone()).await.unwrap().0,
            full.backup_id
        );
        assert_eq!(
            base(whole_node.clone(), point.clone()).await.unwrap().0,
            full.backup_id
        );
        assert_eq!(
            base(ks("ks2"), point.clone()).await.unwrap(),
            (partial.backup_id.clone(), vec!["ks2.users".into()])
        );
    }
    // Named, it is what the restore gets, but never for a whole node.
    let named = Point::Backup(partial.backup_id.clone());
    assert_eq!(
        base(all(), named.clone()).await.unwrap().0,
        partial.backup_id
    );
    let err = base(whole_node, named).await.unwrap_err().to_string();
    assert!(
        err.contains("holds only keyspace(s) ks2") && err.contains("every keyspace"),
        "{err}"
    );
}

pub async fn a_point_in_time_takes_incrementals_written_up_to_it(store: ObjectStore) {
    let node = Node::new();
    node.write_sstable(T1, 1, 100_000);
    let backups = node.backups(&store);
    back_up(&backups, &node, "base").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    node.write_sstable(T1, 2, 100_000);
    node.link_backups_of(2);
    let early = backups
        .upload_incrementals(&Progress::default(), &CancellationToken::new())
        .await
        .unwrap()
        .unwrap();
    let t = OffsetDateTime::now_utc();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    node.write_sstable(T1, 3, 100_000);
    node.link_backups_of(3);
    backups
        .upload_incrementals(&Progress::default(), &CancellationToken::new())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(early.files.len(), 4);

    let plan = plan_slot(&backups.catalog, &slot(), &Point::At(t), &all())
        .await
        .unwrap();
    assert_eq!(plan.incremental_files, 4, "generation 2 only");
    let names: Vec<&str> = plan.files.iter().map(|f| f.name.as_str()).collect();
    assert!(names.contains(&"nb-2-big-Data.db"), "{names:?}");
    assert!(!names.iter().any(|n| n.starts_with("nb-3-")), "{names:?}");
    let now = plan_slot(
        &backups.catalog,
        &slot(),
        &Point::At(OffsetDateTime::now_utc()),
        &all(),
    )
    .await
    .unwrap();
    assert_eq!(now.incremental_files, 8);
}

/// Stages `files` into `dir`, 3 at a time, unthrottled.
async fn stage_into(
    store: &ObjectStore,
    files: &[anchises_backup::manifest::FileEntry],
    dir: &std::path::Path,
) -> Result<anchises_backup::restore::Fetched, BackupError> {
    let (progress, cancel) = (Progress::default(), CancellationToken::new());
    stage(
        store,
        files,
        dir,
        3,
        &Throttle::unlimited(),
        &progress,
        &cancel,
    )
    .await
}

fn same_inode(a: &std::path::Path, b: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (a, b) = (std::fs::metadata(a).unwrap(), std::fs::metadata(b).unwrap());
    (a.dev(), a.ino()) == (b.dev(), b.ino())
}

/// Backs `node` up to `store` (backup `tag`) and plans restoring all of it.
async fn backed_up_plan(node: &Node, store: &ObjectStore, tag: &str) -> SlotPlan {
    let backups = node.backups(store);
    back_up(&backups, node, tag).await.unwrap();
    plan_slot(&backups.catalog, &slot(), &Point::Latest, &all())
        .await
        .unwrap()
}

pub async fn staging_verifies_every_file_and_resumes(store: ObjectStore) {
    let node = Node::new();
    node.write_sstable(T1, 1, 300_000);
    node.write_sstable(T2, 1, 300_000);
    let plan = backed_up_plan(&node, &store, "s").await;
    let tmp = tempfile::tempdir().unwrap();
    let staging = tmp.path().join("staging");
    let progress = Progress::default();
    let n = stage(
        &store,
        &plan.files,
        &staging,
        3,
        &Throttle::unlimited(),
        &progress,
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(n.downloaded, 8);
    // A local store's raw Data.db objects are hard-linked, every other file
    // copied; nothing is linked from any other store.
    let mut linked = 0;
    for f in &plan.files {
        let path = staged_path(&staging, f);
        let staged = std::fs::read(&path).unwrap();
        let original = std::fs::read(
            node.table(if f.keyspace == "ks1" { T1 } else { T2 })
                .join(&f.name),
        )
        .unwrap();
        assert_eq!(staged, original, "{}", f.name);
        let object = store.local_file(&f.object_key().unwrap());
        let shares_inode = object.as_ref().is_some_and(|o| same_inode(o, &path));
        let should =
            object.is_some() && f.name.ends_with("-Data.db") && f.compression == Compression::None;
        assert_eq!(shares_inode, should, "{} ({:?})", f.name, f.compression);
        assert_eq!(links(&store, f, &staging), should, "{}", f.name);
        linked += u64::from(shares_inode);
    }
    assert_eq!(n.linked, linked);
    if store
        .local_file(&plan.files[0].object_key().unwrap())
        .is_some()
    {
        assert_eq!(linked, 2, "one Data.db per table");
    }
    assert_eq!(progress.view().bytes_done, plan.bytes);
    // A rerun downloads only what is missing.
    std::fs::remove_file(staged_path(&staging, &plan.files[0])).unwrap();
    let again = stage_into(&store, &plan.files, &staging).await.unwrap();
    assert_eq!(again.downloaded, 1);
    // Staging ends synced to disk, and marked so.
    let marker = synced_marker(&staging);
    assert!(marker.exists());
    // Without the mark a rerun checks the content of what it keeps: a file
    // of the right size whose content never reached the disk is fetched
    // again. (A copied file: a linked one shares the store's inode.)
    let unsynced = plan
        .files
        .iter()
        .find(|f| !links(&store, f, &staging))
        .unwrap();
    let path = staged_path(&staging, unsynced);
    let good = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, vec![0u8; good.len()]).unwrap();
    std::fs::remove_file(&marker).unwrap();
    let again = stage_into(&store, &plan.files, &staging).await.unwrap();
    assert_eq!(again.downloaded, 1);
    assert_eq!(std::fs::read(&path).unwrap(), good);
    assert!(marker.exists());

    // A corrupted object fails staging, naming the file, and leaves no file
    // under its name (nor a temp file beside it), copied or linked.
    for suffix in ["Index.db", "Data.db"] {
        let victim = plan
            .files
            .iter()
            .find(|f| f.name.ends_with(suffix))
            .unwrap();
        let key = victim.object_key().unwrap();
        let good = store.get(&key).await.unwrap();
        let mut bytes = good.to_vec();
        bytes[10] ^= 1;
        store.put(&key, bytes.into()).await.unwrap();
        let fresh = tempfile::tempdir().unwrap();
        let err = stage_into(&store, std::slice::from_ref(victim), fresh.path())
            .await
            .unwrap_err();
        assert!(matches!(err, BackupError::Corrupt(_)), "{err:?}");
        assert!(err.to_string().contains(&victim.name), "{err}");
        let dir = staged_path(fresh.path(), victim);
        let dir = dir.parent().unwrap();
        assert_eq!(
            std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0),
            0,
            "nothing left in {}",
            dir.display()
        );
        store.put(&key, good).await.unwrap();
    }
    let victim = plan
        .files
        .iter()
        .find(|f| f.name.ends_with("Index.db"))
        .unwrap();
    let key = victim.object_key().unwrap();
    // A missing object too; a staging that fails is no longer marked synced.
    store.delete(&key).await.unwrap();
    std::fs::remove_file(staged_path(&staging, victim)).unwrap();
    let err = stage_into(&store, &plan.files, &staging).await.unwrap_err();
    assert!(err.to_string().contains("not found"), "{err}");
    assert!(!marker.exists());
}

pub async fn a_manifest_entry_that_escapes_the_data_directory_is_refused(store: ObjectStore) {
    let node = Node::new();
    node.write_sstable(T1, 1, 10_000);
    let backups = node.backups(&store);
    let (mut manifest, _) = back_up(&backups, &node, "x").await.unwrap();
    manifest.files[0].table_dir = "../../etc".into();
    manifest.backup_id = BackupId::generate(OffsetDateTime::now_utc() + time::Duration::seconds(5));
    manifest.finished_at += time::Duration::seconds(5);
    backups.catalog.put_manifest(&manifest).await.unwrap();
    let err = plan_slot(&backups.catalog, &slot(), &Point::Latest, &all())
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("would write outside the data directory"),
        "{err}"
    );
    let staging = tempfile::tempdir().unwrap();
    let err = stage(
        &store,
        &manifest.files,
        staging.path(),
        2,
        &Throttle::unlimited(),
        &Progress::default(),
        &CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("would write outside"), "{err}");
    assert_eq!(
        std::fs::read_dir(staging.path()).unwrap().count(),
        0,
        "nothing staged"
    );
}

pub async fn a_cancel_does_not_wait_for_the_throttle(store: ObjectStore) {
    let node = Node::new();
    node.write_sstable(T1, 1, 300_000);
    let plan = backed_up_plan(&node, &store, "c").await;
    // At 1 KiB/s the files would take minutes; the cancel comes after 300 ms.
    let staging = tempfile::tempdir().unwrap();
    let cancel = CancellationToken::new();
    let canceller = {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            cancel.cancel();
        })
    };
    let progress = Progress::default();
    let staged = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        stage(
            &store,
            &plan.files,
            staging.path(),
            2,
            &Throttle::new(Some(1024)),
            &progress,
            &cancel,
        ),
    )
    .await
    .expect("the cancel ends staging without waiting for the throttle");
    canceller.await.unwrap();
    assert!(matches!(staged, Err(BackupError::Cancelled)), "{staged:?}");
    assert!(
        progress.view().bytes_done < plan.bytes,
        "{:?}",
        progress.view()
    );
}
