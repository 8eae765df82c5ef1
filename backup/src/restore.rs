//! Restore planning and staging: which stored files bring a slot back to a
//! backup or a point in time, and downloading them (verified) into a staging
//! directory. Loading staged files into Cassandra is the sidecar's job.
//!
//! A point in time T takes the newest backup finished at or before T, plus the
//! incremental SSTables written after that backup started and at or before T.
//! Incrementals have flush granularity: a row written before T but flushed
//! after it is not part of the restore.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::catalog::Catalog;
use crate::error::BackupError;
use crate::files::Progress;
use crate::layout::table_name_of_dir;
use crate::manifest::{BackupId, FileEntry, NodeManifest, SlotRef};
use crate::store::ObjectStore;
use crate::upload::{fetch_object, Throttle};

/// Keyspaces that belong to the node, not to the data: an online restore
/// leaves them alone.
pub const SYSTEM_KEYSPACES: &[&str] = &[
    "system",
    "system_schema",
    "system_auth",
    "system_distributed",
    "system_traces",
    "system_views",
    "system_virtual_schema",
    "system_cluster_metadata",
];

pub fn is_system_keyspace(ks: &str) -> bool {
    SYSTEM_KEYSPACES.contains(&ks)
}

/// What to restore to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Point {
    /// The newest backup.
    Latest,
    Backup(BackupId),
    #[serde(with = "time::serde::rfc3339")]
    At(OffsetDateTime),
}

/// Which tables to restore.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selection {
    /// Only these keyspaces (all non-system ones when both lists are empty).
    #[serde(default)]
    pub keyspaces: Vec<String>,
    /// Only these tables, as `ks.table`.
    #[serde(default)]
    pub tables: Vec<String>,
    /// Include the system keyspaces (a full-node restore).
    #[serde(default)]
    pub include_system: bool,
    /// Include `system_schema` and `system_auth`, but not the node's own
    /// system keyspaces (a new node started from another cluster's data).
    #[serde(default)]
    pub schema_tables: bool,
}

impl Selection {
    /// Whether a backup of `keyspaces` (empty: all of them) holds everything
    /// this selection may take: a backup of some keyspaces covers only a
    /// selection of those keyspaces (or their tables), never the system
    /// keyspaces nor "every keyspace".
    pub fn covered_by(&self, keyspaces: &[String]) -> bool {
        if keyspaces.is_empty() {
            return true;
        }
        if self.include_system
            || self.schema_tables
            || (self.keyspaces.is_empty() && self.tables.is_empty())
        {
            return false;
        }
        let has = |ks: &str| keyspaces.iter().any(|k| k == ks);
        self.keyspaces.iter().all(|k| has(k))
            && self
                .tables
                .iter()
                .all(|t| t.split_once('.').is_some_and(|(ks, _)| has(ks)))
    }

    fn takes(&self, keyspace: &str, table: &str) -> bool {
        if is_system_keyspace(keyspace) {
            return self.include_system
                || (self.schema_tables && matches!(keyspace, "system_schema" | "system_auth"));
        }
        if self.keyspaces.is_empty() && self.tables.is_empty() {
            return true;
        }
        self.keyspaces.iter().any(|k| k == keyspace)
            || self
                .tables
                .iter()
                .any(|t| *t == format!("{keyspace}.{table}"))
    }
}

/// The files that restore one slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotPlan {
    pub source: SlotRef,
    /// The snapshot backup the restore starts from.
    pub base: BackupId,
    #[serde(with = "time::serde::rfc3339")]
    pub base_finished_at: OffsetDateTime,
    /// Files from the incremental log (point in time only).
    pub incremental_files: usize,
    pub files: Vec<FileEntry>,
    pub bytes: u64,
    /// `ks.table`, sorted.
    pub tables: Vec<String>,
    pub tokens: Vec<String>,
    pub cassandra_version: String,
    /// The schema at backup time (`DESCRIBE SCHEMA`).
    pub schema: String,
}

/// One path segment that cannot leave its directory.
fn safe_segment(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.starts_with('.') && !s.contains(['/', '\\', '\0'])
}

/// Checks that an entry names a file inside `<ks>/<table dir>/` and returns
/// its table name.
pub fn check_entry(entry: &FileEntry) -> Result<String, BackupError> {
    let bad = |why: &str| {
        BackupError::Corrupt(format!(
            "manifest entry {:?}/{:?}/{:?} would write outside the data directory ({why}); nothing was restored",
            entry.keyspace, entry.table_dir, entry.name
        ))
    };
    if !safe_segment(&entry.keyspace)
        || !safe_segment(&entry.table_dir)
        || !safe_segment(&entry.name)
    {
        return Err(bad(
            "a path segment is empty, '.', '..', hidden or holds a separator",
        ));
    }
    let table =
        table_name_of_dir(&entry.table_dir).ok_or_else(|| bad("not a table directory name"))?;
    Ok(table.to_string())
}

/// `nb-1-big-Data.db` → `nb-1-big`: the SSTable a component belongs to.
fn sstable_of(name: &str) -> &str {
    name.rsplit_once('-').map_or(name, |(prefix, _)| prefix)
}

/// Plans the restore of `source` to `point` for `selection`.
pub async fn plan_slot(
    catalog: &Catalog,
    source: &SlotRef,
    point: &Point,
    selection: &Selection,
) -> Result<SlotPlan, BackupError> {
    let manifests = catalog.manifests(source).await?;
    // Without a backup named, the newest that holds all the selection takes
    // (a later backup of other keyspaces only is no base for it).
    let covering = manifests
        .iter()
        .rev()
        .filter(|m| selection.covered_by(&m.keyspaces));
    let base: &NodeManifest = match point {
        Point::Latest => covering.clone().next(),
        Point::Backup(id) => manifests.iter().find(|m| &m.backup_id == id),
        Point::At(t) => covering.clone().find(|m| m.finished_at <= *t),
    }
    .ok_or_else(|| {
        // Say so when backups of some keyspaces were passed over.
        let of = if manifests.iter().all(|m| selection.covered_by(&m.keyspaces)) {
            ""
        } else {
            " of every keyspace the restore takes"
        };
        BackupError::Invalid(match point {
            Point::Latest => format!(
                "slot {} of cluster {} has no backup{of}",
                source.label(),
                source.cluster
            ),
            Point::Backup(id) => format!(
                "slot {} of cluster {} has no backup {id}",
                source.label(),
                source.cluster
            ),
            Point::At(t) => format!(
                "slot {} of cluster {} has no backup{of} finished at or before {}",
                source.label(),
                source.cluster,
                crate::manifest::rfc3339(*t)
            ),
        })
    })?;
    if (selection.include_system || selection.schema_tables) && !base.keyspaces.is_empty() {
        return Err(BackupError::Invalid(format!(
            "backup {} holds only keyspace(s) {}: restoring a whole node needs a backup of every keyspace",
            base.backup_id,
            base.keyspaces.join(", ")
        )));
    }
    let mut chosen: Vec<FileEntry> = Vec::new();
    for f in &base.files {
        let table = check_entry(f)?;
        if selection.takes(&f.keyspace, &table) {
            chosen.push(f.clone());
        }
    }
    let mut incremental_files = 0;
    if let Point::At(t) = point {
        let mut extra: Vec<FileEntry> = Vec::new();
        for (_, entry) in catalog.incremental_log(source).await? {
            for f in entry.files {
                let written = f.modified_at.unwrap_or(entry.written_at);
                if written <= base.started_at || written > *t {
                    continue;
                }
                let table = check_entry(&f)?;
                if selection.takes(&f.keyspace, &table) {
                    extra.push(f);
                }
            }
        }
        // Only whole SSTables (their TOC is there), each file once.
        let mut groups: BTreeMap<(String, String, String), Vec<FileEntry>> = BTreeMap::new();
        for f in extra {
            groups
                .entry((
                    f.keyspace.clone(),
                    f.table_dir.clone(),
                    sstable_of(&f.name).to_string(),
                ))
                .or_default()
                .push(f);
        }
        let present: BTreeSet<(String, String, String)> = chosen
            .iter()
            .map(|f| (f.keyspace.clone(), f.table_dir.clone(), f.name.clone()))
            .collect();
        for (_, files) in groups {
            if !files.iter().any(|f| f.name.ends_with("-TOC.txt")) {
                continue;
            }
            let mut seen = BTreeSet::new();
            for f in files {
                let id = (f.keyspace.clone(), f.table_dir.clone(), f.name.clone());
                if present.contains(&id) || !seen.insert(id) {
                    continue;
                }
                incremental_files += 1;
                chosen.push(f);
            }
        }
    }
    let tables: BTreeSet<String> = chosen
        .iter()
        .map(|f| {
            format!(
                "{}.{}",
                f.keyspace,
                table_name_of_dir(&f.table_dir).unwrap_or(&f.table_dir)
            )
        })
        .collect();
    Ok(SlotPlan {
        source: source.clone(),
        base: base.backup_id.clone(),
        base_finished_at: base.finished_at,
        incremental_files,
        bytes: chosen.iter().map(|f| f.size).sum(),
        files: chosen,
        tables: tables.into_iter().collect(),
        tokens: base.tokens.clone(),
        cassandra_version: base.cassandra_version.clone(),
        schema: base.schema.clone(),
    })
}

/// Whether [`stage`] will hard-link `f` from `store` rather than copy it,
/// into a staging directory under `root`: a local store's object that
/// [`may_link`](crate::upload::may_link), on `root`'s filesystem. Such a
/// file takes no room there.
pub fn links(store: &ObjectStore, f: &FileEntry, root: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let device = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).ok();
    crate::upload::may_link(f.compression, &f.name)
        && f.object_key()
            .ok()
            .and_then(|key| store.local_file(&key))
            .and_then(|object| device(&object))
            .is_some_and(|d| Some(d) == device(root))
}

/// Where a planned file is staged: `<staging>/<ks>/<table dir>/<name>`.
pub fn staged_path(staging: &Path, f: &FileEntry) -> PathBuf {
    staging.join(&f.keyspace).join(&f.table_dir).join(&f.name)
}

/// Whether `f` is already staged whole in `staging` (a rerun keeps it):
/// its size. [`stage`] also checks the hash of a file staged since the
/// staging was last [`synced_marker`]-marked.
pub fn is_staged(staging: &Path, f: &FileEntry) -> bool {
    std::fs::metadata(staged_path(staging, f)).is_ok_and(|m| m.len() == f.size)
}

/// The file beside `staging` whose presence says every file in `staging`
/// reached the disk: [`stage`] writes its files without syncing each and
/// syncs the filesystem once at the end, so after a machine crash a file
/// staged before that may have its full size but not its content.
pub fn synced_marker(staging: &Path) -> PathBuf {
    let mut name = staging.as_os_str().to_owned();
    name.push(".synced");
    PathBuf::from(name)
}

/// Whether the staged copy of `f` is there and whole: its size, and when
/// the staging is not known to be synced, its content hash.
async fn kept(staging: &Path, f: &FileEntry, synced: bool) -> bool {
    if !is_staged(staging, f) {
        return false;
    }
    synced
        || crate::upload::hash_file(&staged_path(staging, f))
            .await
            .is_ok_and(|(hash, _)| hash.eq_ignore_ascii_case(&f.hash))
}

/// Makes everything written under `staging` durable with one `syncfs`
/// rather than a sync (a disk cache flush) per file, then marks it so.
async fn sync_staging(staging: PathBuf) -> Result<(), BackupError> {
    tokio::task::spawn_blocking(move || {
        std::fs::File::open(&staging)
            .and_then(|dir| Ok(rustix::fs::syncfs(&dir)?))
            .map_err(|source| BackupError::File {
                path: staging.clone(),
                source,
            })?;
        let marker = synced_marker(&staging);
        std::fs::write(&marker, b"").map_err(|source| BackupError::File {
            path: marker,
            source,
        })
    })
    .await
    .map_err(|e| BackupError::Internal(format!("sync thread: {e}")))?
}

/// Removes the [`synced_marker`] before files that are not yet synced join
/// the staging, durably: a crash after that must not find it. Returns
/// whether it was there.
fn unmark_synced(staging: &Path) -> Result<bool, BackupError> {
    let marker = synced_marker(staging);
    let removed = match std::fs::remove_file(&marker) {
        Ok(()) => {
            let parent = marker.parent().unwrap_or(Path::new("."));
            std::fs::File::open(parent).and_then(|d| d.sync_all())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => Err(e),
    };
    removed.map(|()| true).map_err(|source| BackupError::File {
        path: marker,
        source,
    })
}

/// How many files [`stage`] fetched now, and how many of those it
/// hard-linked from a local store rather than copied.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Fetched {
    pub downloaded: u64,
    pub linked: u64,
}

/// Downloads every file into `staging`, each checked against its size and
/// hash before it gets its name, at most at the throttle's rate, and syncs
/// them all to disk once at the end. Files already staged (a rerun) are
/// kept: by their size when the staging was synced, else by their hash.
pub async fn stage(
    store: &ObjectStore,
    files: &[FileEntry],
    staging: &Path,
    concurrency: usize,
    throttle: &Throttle,
    progress: &Progress,
    cancel: &CancellationToken,
) -> Result<Fetched, BackupError> {
    for f in files {
        check_entry(f)?;
    }
    progress.start_totals(files.len() as u64, files.iter().map(|f| f.size).sum());
    let synced = unmark_synced(staging)?;
    // Largest first, as a backup stores them: the longest reads start at
    // once and the small files fill in beside them, rather than one large
    // file being read alone at the end.
    let mut order: Vec<&FileEntry> = files.iter().collect();
    order.sort_by_key(|f| std::cmp::Reverse(f.size));
    // Ok(None): staged already; Ok(Some(linked)): fetched now.
    let results: Vec<Result<Option<bool>, BackupError>> = futures::stream::iter(order.into_iter().cloned())
        .map(|f| async move {
            let dest = staged_path(staging, &f);
            if kept(staging, &f, synced).await {
                progress.bytes_done.fetch_add(f.size, Ordering::Relaxed);
                progress.files_done.fetch_add(1, Ordering::Relaxed);
                progress.files_reused.fetch_add(1, Ordering::Relaxed);
                return Ok(None);
            }
            if cancel.is_cancelled() {
                return Err(BackupError::Cancelled);
            }
            let dir = dest.parent().expect("staged files have a directory");
            std::fs::create_dir_all(dir).map_err(|source| BackupError::File {
                path: dir.to_path_buf(),
                source,
            })?;
            let key = f.object_key()?;
            let mut attempt = 0;
            let linked = loop {
                attempt += 1;
                let counter = progress.track();
                let result = tokio::select! {
                    r = fetch_object(store, &key, &f, Some(&dest), Some(counter.clone()), throttle) => r,
                    _ = cancel.cancelled() => Err(BackupError::Cancelled),
                };
                progress.untrack(&counter, result.is_ok());
                match result {
                    Ok(linked) => break linked,
                    Err(e) if e.is_retryable() && attempt < 3 => continue,
                    Err(BackupError::Corrupt(m)) => {
                        return Err(BackupError::Corrupt(format!("{}: {m}", f.relative_path())))
                    }
                    Err(e) => return Err(e),
                }
            };
            progress.files_done.fetch_add(1, Ordering::Relaxed);
            progress.files_uploaded.fetch_add(1, Ordering::Relaxed);
            progress.bytes_uploaded.fetch_add(f.size, Ordering::Relaxed);
            Ok(Some(linked))
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let mut staged = Fetched::default();
    let mut first_error = None;
    for r in results {
        match r {
            Ok(Some(linked)) => {
                staged.downloaded += 1;
                staged.linked += u64::from(linked);
            }
            Ok(None) => {}
            Err(e) => {
                if !matches!(e, BackupError::Cancelled) {
                    progress.error(e.to_string());
                }
                if first_error.is_none() || matches!(first_error, Some(BackupError::Cancelled)) {
                    first_error = Some(e);
                }
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None if files.is_empty() => Ok(staged),
        None => sync_staging(staging.to_path_buf()).await.map(|()| staged),
    }
}
