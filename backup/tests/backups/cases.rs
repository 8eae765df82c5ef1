use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anchises_backup::files::{incremental_files, snapshot_files, Progress, StoreSettings};
use anchises_backup::manifest::{BackupId, Compression, NodeManifest, SlotRef};
use anchises_backup::node::{NodeInfo, SlotBackups};
use anchises_backup::retention::{verify_files, Retention};
use anchises_backup::store::Faults;
use anchises_backup::{BackupError, ObjectKey, ObjectStore};
use tempfile::TempDir;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

pub const T1: &str = "events-0123456789abcdef0123456789abcdef";
pub const T2: &str = "users-fedcba9876543210fedcba9876543210";

/// A node's data directory with two keyspaces' tables and a state directory.
pub struct Node {
    _dir: TempDir,
    data: PathBuf,
    state: PathBuf,
}

impl Node {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let state = dir.path().join("state");
        for t in [format!("ks1/{T1}"), format!("ks2/{T2}")] {
            std::fs::create_dir_all(data.join(t)).unwrap();
        }
        Node {
            data,
            state,
            _dir: dir,
        }
    }

    /// Writes an SSTable (Data, CompressionInfo, Index, TOC) into a table dir:
    /// Data is incompressible, Index compresses well.
    pub fn write_sstable(&self, table: &str, generation: u32, data_bytes: usize) {
        let dir = self.table(table);
        let prefix = format!("nb-{generation}-big");
        std::fs::write(
            dir.join(format!("{prefix}-Data.db")),
            pseudo_random(data_bytes, generation),
        )
        .unwrap();
        std::fs::write(
            dir.join(format!("{prefix}-CompressionInfo.db")),
            vec![7u8; 512],
        )
        .unwrap();
        std::fs::write(
            dir.join(format!("{prefix}-Index.db")),
            "partition key index ".repeat(5_000),
        )
        .unwrap();
        std::fs::write(
            dir.join(format!("{prefix}-TOC.txt")),
            "Data.db\nIndex.db\nTOC.txt\n",
        )
        .unwrap();
    }

    pub fn table(&self, table: &str) -> PathBuf {
        let ks = if table == T1 { "ks1" } else { "ks2" };
        self.data.join(ks).join(table)
    }

    /// Hard-links every live component into `snapshots/<tag>`, as Cassandra does.
    fn snapshot(&self, tag: &str) {
        self.link_into(&format!("snapshots/{tag}"));
    }

    /// Hard-links every live component into `backups/` (incremental backup).
    fn link_backups(&self) {
        self.link_into("backups");
    }

    /// Hard-links one generation's components into `backups/`.
    pub fn link_backups_of(&self, generation: u32) {
        for t in [T1, T2] {
            let dir = self.table(t);
            let target = dir.join("backups");
            std::fs::create_dir_all(&target).unwrap();
            for entry in std::fs::read_dir(&dir).unwrap() {
                let entry = entry.unwrap();
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with(&format!("nb-{generation}-")) {
                    std::fs::hard_link(entry.path(), target.join(&name)).unwrap();
                }
            }
        }
    }

    fn link_into(&self, sub: &str) {
        for t in [T1, T2] {
            let dir = self.table(t);
            let target = dir.join(sub);
            std::fs::create_dir_all(&target).unwrap();
            for entry in std::fs::read_dir(&dir).unwrap() {
                let entry = entry.unwrap();
                if entry.file_type().unwrap().is_file() && !target.join(entry.file_name()).exists()
                {
                    std::fs::hard_link(entry.path(), target.join(entry.file_name())).unwrap();
                }
            }
        }
    }

    pub fn backups(&self, store: &ObjectStore) -> SlotBackups {
        let settings = StoreSettings {
            concurrency: 3,
            ..StoreSettings::default()
        };
        SlotBackups::new(store.clone(), slot(), &self.data, &self.state, settings)
    }
}

pub fn slot() -> SlotRef {
    SlotRef {
        cluster: "orders".into(),
        dc: "dc1".into(),
        slot: 0,
    }
}

fn info() -> NodeInfo {
    NodeInfo {
        rack: "r1".into(),
        address: "127.0.0.9".into(),
        cassandra_version: "5.0.9".into(),
        partitioner: "org.apache.cassandra.dht.Murmur3Partitioner".into(),
        tokens: vec!["-9223372036854775808".into()],
        schema: "CREATE KEYSPACE ks1 WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1};".into(),
    }
}

/// Incompressible bytes, different per seed.
fn pseudo_random(n: usize, seed: u32) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ u64::from(seed).wrapping_mul(0x2545_F491_4F6C_DD1D);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub async fn back_up(
    backups: &SlotBackups,
    node: &Node,
    tag: &str,
) -> Result<(NodeManifest, Arc<Progress>), BackupError> {
    back_up_keyspaces(backups, node, tag, &[]).await
}

/// [`back_up`] of `keyspaces` only (empty: all of them).
pub async fn back_up_keyspaces(
    backups: &SlotBackups,
    node: &Node,
    tag: &str,
    keyspaces: &[&str],
) -> Result<(NodeManifest, Arc<Progress>), BackupError> {
    node.snapshot(tag);
    let mut files = snapshot_files(&node.data, tag).unwrap();
    files.retain(|f| keyspaces.is_empty() || keyspaces.contains(&f.keyspace.as_str()));
    let progress = Arc::new(Progress::default());
    let id = BackupId::generate(OffsetDateTime::now_utc());
    let manifest = backups
        .back_up_snapshot(
            &id,
            OffsetDateTime::now_utc(),
            info(),
            keyspaces.iter().map(|k| k.to_string()).collect(),
            files,
            &progress,
            &CancellationToken::new(),
        )
        .await?;
    Ok((manifest, progress))
}

fn file_names(manifest: &NodeManifest) -> Vec<String> {
    manifest.files.iter().map(|f| f.relative_path()).collect()
}

pub async fn a_snapshot_backup_stores_every_file_and_the_manifest_last(store: ObjectStore) {
    let node = Node::new();
    node.write_sstable(T1, 1, 3_000_000);
    node.write_sstable(T2, 1, 200_000);
    let backups = node.backups(&store);
    let (manifest, progress) = back_up(&backups, &node, "one").await.unwrap();

    assert_eq!(manifest.files.len(), 8, "{:?}", file_names(&manifest));
    assert_eq!(manifest.totals.uploaded_files, 8);
    assert_eq!(manifest.totals.reused_files, 0);
    let view = progress.view();
    assert_eq!(view.files_done, 8);
    assert_eq!(view.bytes_done, view.bytes_total);
    assert_eq!(view.bytes_total, manifest.totals.bytes);
    let data = manifest
        .files
        .iter()
        .find(|f| f.keyspace == "ks1" && f.name == "nb-1-big-Data.db")
        .unwrap();
    // Cassandra compressed Data.db already (CompressionInfo exists): kept raw.
    assert_eq!(data.compression, Compression::None);
    assert_eq!(data.size, 3_000_000);
    assert_eq!(data.stored_size, 3_000_000);
    assert!(
        data.key
            .ends_with("/sst/ks1/events-0123456789abcdef0123456789abcdef/nb-1-big-Data.db"),
        "{}",
        data.key
    );
    let index = manifest
        .files
        .iter()
        .find(|f| f.name == "nb-1-big-Index.db")
        .unwrap();
    assert_eq!(index.compression, Compression::Zstd);
    assert!(
        index.stored_size * 10 < index.size,
        "{} vs {}",
        index.stored_size,
        index.size
    );
    assert_eq!(
        index.hash,
        blake3::hash(&std::fs::read(node.table(T1).join("nb-1-big-Index.db")).unwrap())
            .to_hex()
            .to_string()
    );
    // The manifest reads back as written; deep verification passes.
    let read = backups
        .catalog
        .manifest(&slot(), &manifest.backup_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read, manifest);
    assert_eq!(
        backups.catalog.backup_ids(&slot()).await.unwrap(),
        vec![manifest.backup_id.clone()]
    );
    let report = verify_files(&backups.catalog, &manifest.files, true, 4).await;
    assert!(report.ok(), "{:?}", report.problems);
    assert_eq!(report.files, 8);
    // The journal of pending uploads is cleared once the manifest names them.
    assert!(!backups.journal().path().exists());
}

pub async fn a_second_backup_of_unchanged_data_uploads_nothing(store: ObjectStore) {
    let node = Node::new();
    node.write_sstable(T1, 1, 2_000_000);
    node.write_sstable(T2, 2, 100_000);
    let backups = node.backups(&store);
    let (first, _) = back_up(&backups, &node, "one").await.unwrap();
    let (second, progress) = back_up(&backups, &node, "two").await.unwrap();
    assert_ne!(first.backup_id, second.backup_id);
    assert_eq!(second.totals.uploaded_bytes, 0, "{:?}", second.totals);
    assert_eq!(second.totals.uploaded_files, 0);
    assert_eq!(second.totals.reused_files, 8);
    assert_eq!(progress.view().bytes_uploaded, 0);
    // The same objects, named by both manifests.
    let keys = |m: &NodeManifest| m.files.iter().map(|f| f.key.clone()).collect::<Vec<_>>();
    assert_eq!(keys(&first), keys(&second));
    // A new SSTable is the only upload of a third backup.
    node.write_sstable(T2, 3, 50_000);
    let (third, _) = back_up(&backups, &node, "three").await.unwrap();
    assert_eq!(third.totals.uploaded_files, 4);
    assert_eq!(third.totals.reused_files, 8);
}

pub async fn verify_finds_a_deleted_and_a_corrupted_object(store: ObjectStore) {
    let node = Node::new();
    node.write_sstable(T1, 1, 500_000);
    let backups = node.backups(&store);
    let (manifest, _) = back_up(&backups, &node, "one").await.unwrap();
    let data = manifest
        .files
        .iter()
        .find(|f| f.name.ends_with("Data.db"))
        .unwrap();
    let toc = manifest
        .files
        .iter()
        .find(|f| f.name.ends_with("TOC.txt"))
        .unwrap();
    store.delete(&data.object_key().unwrap()).await.unwrap();
    // Same stored size, different bytes: only a deep check can tell.
    let toc_key = toc.object_key().unwrap();
    let mut bytes = store.get(&toc_key).await.unwrap().to_vec();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    store.put(&toc_key, bytes.into()).await.unwrap();

    let shallow = verify_files(&backups.catalog, &manifest.files, false, 4).await;
    assert_eq!(shallow.problems.len(), 1, "{:?}", shallow.problems);
    assert!(
        shallow.problems[0].contains("nb-1-big-Data.db") && shallow.problems[0].contains("missing"),
        "{:?}",
        shallow.problems
    );
    let deep = verify_files(&backups.catalog, &manifest.files, true, 4).await;
    assert_eq!(deep.problems.len(), 2, "{:?}", deep.problems);
    assert!(
        deep.problems.iter().any(|p| p.contains("nb-1-big-TOC.txt")),
        "{:?}",
        deep.problems
    );
}

pub async fn incrementals_are_logged_removed_and_reused_by_the_next_snapshot(store: ObjectStore) {
    let node = Node::new();
    let backups = node.backups(&store);
    let none = backups
        .upload_incrementals(&Progress::default(), &CancellationToken::new())
        .await
        .unwrap();
    assert!(none.is_none(), "nothing to upload yet");

    node.write_sstable(T1, 1, 400_000);
    node.link_backups();
    assert_eq!(incremental_files(&node.data).unwrap().len(), 4);
    let entry = backups
        .upload_incrementals(&Progress::default(), &CancellationToken::new())
        .await
        .unwrap()
        .expect("an entry");
    assert_eq!(entry.files.len(), 4);
    assert!(
        incremental_files(&node.data).unwrap().is_empty(),
        "links removed"
    );
    let log = backups.catalog.incremental_log(&slot()).await.unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].1, entry);
    assert!(verify_files(&backups.catalog, &entry.files, true, 2)
        .await
        .ok());

    // The snapshot of the same SSTable reuses the incremental's objects.
    let (manifest, _) = back_up(&backups, &node, "snap").await.unwrap();
    assert_eq!(manifest.totals.uploaded_files, 0, "{:?}", manifest.totals);
    assert_eq!(manifest.totals.reused_files, 4);
}

pub async fn an_interrupted_backup_resumes_without_uploading_finished_files(store: ObjectStore) {
    let node = Node::new();
    for g in 1..=4 {
        node.write_sstable(T1, g, 600_000);
    }
    let tag = "interrupted";
    node.snapshot(tag);
    let files = snapshot_files(&node.data, tag).unwrap();
    let total = files.len() as u64;
    let settings = StoreSettings {
        concurrency: 1,
        ..StoreSettings::default()
    };
    let backups = SlotBackups::new(
        store.clone(),
        slot(),
        &node.data,
        &node.state,
        settings.clone(),
    );
    let progress = Arc::new(Progress::default());
    let cancel = CancellationToken::new();
    // Stop the backup once five files are stored (as a crash would).
    let watcher = {
        let progress = progress.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            while progress.files_done.load(Ordering::Relaxed) < 5 {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            cancel.cancel();
        })
    };
    let id = BackupId::generate(OffsetDateTime::now_utc());
    let result = backups
        .back_up_snapshot(
            &id,
            OffsetDateTime::now_utc(),
            info(),
            vec![],
            files.clone(),
            &progress,
            &cancel,
        )
        .await;
    watcher.await.unwrap();
    assert!(matches!(result, Err(BackupError::Cancelled)), "{result:?}");
    assert!(
        backups
            .catalog
            .backup_ids(&slot())
            .await
            .unwrap()
            .is_empty(),
        "no manifest"
    );
    let stored = progress.files_uploaded.load(Ordering::Relaxed);
    assert!(
        stored >= 5 && stored < total,
        "{stored} of {total} stored before the stop"
    );

    // A new process (a new SlotBackups on the same state dir) resumes.
    let again = SlotBackups::new(store.clone(), slot(), &node.data, &node.state, settings);
    let progress = Progress::default();
    let manifest = again
        .back_up_snapshot(
            &id,
            OffsetDateTime::now_utc(),
            info(),
            vec![],
            files,
            &progress,
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(
        manifest.totals.reused_files, stored,
        "{:?}",
        manifest.totals
    );
    assert_eq!(manifest.totals.uploaded_files, total - stored);
    assert!(verify_files(&again.catalog, &manifest.files, true, 4)
        .await
        .ok());
}

pub async fn a_flaky_store_still_gets_every_object_right(store: ObjectStore) {
    let node = Node::new();
    for g in 1..=3 {
        node.write_sstable(T1, g, 1_500_000);
        node.write_sstable(T2, g, 300_000);
    }
    let faults = Arc::new(Faults::fail_fraction(0.2, 42));
    let flaky = store.clone().with_faults(faults.clone());
    let backups = node.backups(&flaky);
    let (manifest, _) = back_up(&backups, &node, "flaky").await.unwrap();
    assert_eq!(manifest.files.len(), 24);
    assert!(faults.injected() > 0, "faults were injected");
    // Checked through the store without faults.
    let clean = node.backups(&store);
    let report = verify_files(&clean.catalog, &manifest.files, true, 4).await;
    assert!(report.ok(), "{:?}", report.problems);
}

pub async fn a_file_vanishing_mid_backup_fails_it_without_a_manifest(store: ObjectStore) {
    let node = Node::new();
    node.write_sstable(T1, 1, 100_000);
    node.write_sstable(T2, 1, 100_000);
    let tag = "vanish";
    node.snapshot(tag);
    let files = snapshot_files(&node.data, tag).unwrap();
    let gone = files
        .iter()
        .find(|f| f.name.ends_with("Index.db"))
        .unwrap()
        .path
        .clone();
    std::fs::remove_file(&gone).unwrap();
    let backups = node.backups(&store);
    let progress = Progress::default();
    let result = backups
        .back_up_snapshot(
            &BackupId::generate(OffsetDateTime::now_utc()),
            OffsetDateTime::now_utc(),
            info(),
            vec![],
            files,
            &progress,
            &CancellationToken::new(),
        )
        .await;
    let err = result.unwrap_err();
    assert!(matches!(err, BackupError::File { .. }), "{err:?}");
    assert!(err.to_string().contains("nb-1-big-Index.db"), "{err}");
    assert!(backups
        .catalog
        .backup_ids(&slot())
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        progress.view().errors.len(),
        1,
        "{:?}",
        progress.view().errors
    );
}

pub async fn purge_keeps_what_retention_keeps_and_sweeps_the_rest(store: ObjectStore) {
    let node = Node::new();
    let backups = node.backups(&store);
    // Three backups; each adds an SSTable and the last two drop the previous
    // one (as compaction would).
    node.write_sstable(T1, 1, 200_000);
    let (b1, _) = back_up(&backups, &node, "b1").await.unwrap();
    node.write_sstable(T1, 2, 200_000);
    let (b2, _) = back_up(&backups, &node, "b2").await.unwrap();
    for ext in ["Data.db", "CompressionInfo.db", "Index.db", "TOC.txt"] {
        std::fs::remove_file(node.table(T1).join(format!("nb-1-big-{ext}"))).unwrap();
    }
    node.write_sstable(T1, 3, 200_000);
    let (b3, _) = back_up(&backups, &node, "b3").await.unwrap();
    assert_eq!(b3.files.len(), 8);

    let manifests = backups.catalog.manifests(&slot()).await.unwrap();
    let retention = Retention {
        keep_last: Some(1),
        keep_days: None,
    };
    let expired = retention.expired(&manifests, OffsetDateTime::now_utc());
    assert_eq!(expired, vec![b1.backup_id.clone(), b2.backup_id.clone()]);
    // Keeping by age keeps all three (they are minutes old).
    let by_age = Retention {
        keep_last: None,
        keep_days: Some(1),
    };
    assert!(by_age
        .expired(&manifests, OffsetDateTime::now_utc())
        .is_empty());

    let now = OffsetDateTime::now_utc();
    let plan = backups
        .purge(|m| retention.expired(m, now), true)
        .await
        .unwrap();
    assert_eq!(plan.backups, expired);
    assert_eq!(plan.kept, vec![b3.backup_id.clone()]);
    // Only generation 1 is named by no kept backup.
    assert_eq!(plan.objects.len(), 4, "{:?}", plan.objects);
    assert!(
        plan.objects.iter().all(|k| k.contains("nb-1-big")),
        "{:?}",
        plan.objects
    );
    // A dry run changes nothing.
    assert_eq!(backups.catalog.backup_ids(&slot()).await.unwrap().len(), 3);

    // The purge waits for whatever holds the slot's lock (an incremental
    // upload adding objects no manifest names yet) before it reads anything.
    let guard = backups.lock().await;
    let purge = tokio::spawn({
        let backups = backups.clone();
        async move { backups.purge(|m| retention.expired(m, now), false).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !purge.is_finished(),
        "the purge ran while the lock was held"
    );
    assert_eq!(backups.catalog.backup_ids(&slot()).await.unwrap().len(), 3);
    drop(guard);
    assert_eq!(purge.await.unwrap().unwrap(), plan);
    assert_eq!(
        backups.catalog.backup_ids(&slot()).await.unwrap(),
        vec![b3.backup_id.clone()]
    );
    for key in &plan.objects {
        let err = store
            .head(&ObjectKey::new(key.clone()).unwrap())
            .await
            .unwrap_err();
        assert!(
            matches!(err, anchises_backup::StoreError::NotFound { .. }),
            "{key}: {err}"
        );
    }
    let report = verify_files(&backups.catalog, &b3.files, true, 4).await;
    assert!(report.ok(), "{:?}", report.problems);
    let remaining = store.list(&slot().sstable_prefix()).await.unwrap();
    assert_eq!(remaining.len(), 8);
}

pub async fn a_changed_file_under_a_known_name_gets_its_own_object(store: ObjectStore) {
    let node = Node::new();
    node.write_sstable(T1, 1, 100_000);
    let backups = node.backups(&store);
    let (first, _) = back_up(&backups, &node, "a").await.unwrap();
    // Same name, same size, other bytes (a table restored from elsewhere).
    let path = node.table(T1).join("nb-1-big-Data.db");
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, pseudo_random(100_000, 99)).unwrap();
    let (second, _) = back_up(&backups, &node, "b").await.unwrap();
    let key_of = |m: &NodeManifest| {
        m.files
            .iter()
            .find(|f| f.name == "nb-1-big-Data.db")
            .unwrap()
            .clone()
    };
    let (a, b) = (key_of(&first), key_of(&second));
    assert_ne!(a.hash, b.hash);
    assert_ne!(a.key, b.key, "the first backup's object is not overwritten");
    assert_eq!(second.totals.uploaded_files, 1);
    for m in [&first, &second] {
        let report = verify_files(&backups.catalog, &m.files, true, 4).await;
        assert!(report.ok(), "{:?}", report.problems);
    }
}
