//! A node's backups: snapshot backups (files of a snapshot → manifest, written
//! last) and incremental uploads (the tables' `backups/` links → the slot's
//! incremental log → links removed). Both go through one [`SlotBackups`] per
//! node, whose lock keeps them, and purges, from interleaving.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::catalog::Catalog;
use crate::error::BackupError;
use crate::files::{incremental_files, totals, FileStorer, Progress, SourceFile, StoreSettings};
use crate::index::{Journal, StoredIndex};
use crate::manifest::{BackupId, IncrementalEntry, NodeManifest, SlotRef, FORMAT};
use crate::retention::{execute_purge, plan_purge, PurgePlan};
use crate::store::ObjectStore;

/// What a manifest records about the node, gathered from Cassandra by the
/// caller (this crate never talks to Cassandra).
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub rack: String,
    pub address: String,
    pub cassandra_version: String,
    pub partitioner: String,
    pub tokens: Vec<String>,
    pub schema: String,
}

/// One node's view of its slot's backups.
#[derive(Debug, Clone)]
pub struct SlotBackups {
    pub store: ObjectStore,
    pub catalog: Catalog,
    pub slot: SlotRef,
    pub data_dir: PathBuf,
    pub settings: StoreSettings,
    journal: Arc<Journal>,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl SlotBackups {
    /// `state_dir` holds the node's journal of unfinished uploads.
    pub fn new(
        store: ObjectStore,
        slot: SlotRef,
        data_dir: &Path,
        state_dir: &Path,
        settings: StoreSettings,
    ) -> Self {
        let journal = state_dir.join(format!("upload-journal-{}-{}.jsonl", slot.dc, slot.slot));
        SlotBackups {
            catalog: Catalog::new(store.clone()),
            store,
            slot,
            data_dir: data_dir.to_path_buf(),
            settings,
            journal: Arc::new(Journal::open(journal)),
            lock: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// Taken by snapshot backups, incremental uploads and purges.
    pub async fn lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.lock.lock().await
    }

    /// Purges the backups `choose` picks among this slot's manifests (oldest
    /// first), and every object that only they named; with `dry_run` only
    /// says what would go. Under the slot's lock, so that no upload lands
    /// between the plan's reading of what is referenced and its sweep.
    pub async fn purge(
        &self,
        choose: impl FnOnce(&[NodeManifest]) -> Vec<BackupId>,
        dry_run: bool,
    ) -> Result<PurgePlan, BackupError> {
        let _guard = self.lock().await;
        let manifests = self.catalog.manifests(&self.slot).await?;
        let delete = choose(&manifests);
        let pending: HashSet<String> = self.journal.entries()?.into_iter().map(|e| e.key).collect();
        let plan = plan_purge(&self.catalog, &self.slot, &delete, &pending).await?;
        if !dry_run {
            execute_purge(&self.catalog, &self.slot, &plan).await?;
        }
        Ok(plan)
    }

    fn storer<'a>(
        &'a self,
        index: &'a Mutex<StoredIndex>,
        progress: &'a Progress,
        cancel: &'a CancellationToken,
    ) -> FileStorer<'a> {
        FileStorer {
            store: &self.store,
            slot: &self.slot,
            index,
            journal: Some(&self.journal),
            settings: &self.settings,
            progress,
            cancel,
        }
    }

    async fn index(&self) -> Result<Mutex<StoredIndex>, BackupError> {
        Ok(Mutex::new(
            StoredIndex::load(&self.catalog, &self.slot, Some(&self.journal)).await?,
        ))
    }

    /// Stores the files of a snapshot and writes the manifest, last. The
    /// caller took the snapshot and clears it afterwards.
    #[allow(clippy::too_many_arguments)]
    pub async fn back_up_snapshot(
        &self,
        id: &BackupId,
        started_at: OffsetDateTime,
        info: NodeInfo,
        keyspaces: Vec<String>,
        files: Vec<SourceFile>,
        progress: &Progress,
        cancel: &CancellationToken,
    ) -> Result<NodeManifest, BackupError> {
        let _guard = self.lock().await;
        let index = self.index().await?;
        let stored = self
            .storer(&index, progress, cancel)
            .store_files(files)
            .await?;
        let manifest = NodeManifest {
            format: FORMAT,
            backup_id: id.clone(),
            slot: self.slot.clone(),
            rack: info.rack,
            address: info.address,
            started_at,
            finished_at: OffsetDateTime::now_utc(),
            cassandra_version: info.cassandra_version,
            partitioner: info.partitioner,
            tokens: info.tokens,
            keyspaces,
            schema: info.schema,
            totals: totals(&stored),
            files: stored.into_iter().map(|(entry, _)| entry).collect(),
        };
        if cancel.is_cancelled() {
            return Err(BackupError::Cancelled);
        }
        self.catalog.put_manifest(&manifest).await?;
        // Every journal entry is named by a manifest or the log now.
        self.journal.clear()?;
        Ok(manifest)
    }

    /// Uploads the incremental links present now: stores them, appends one
    /// log entry, then removes the links. Returns the entry (None when there
    /// was nothing to upload).
    pub async fn upload_incrementals(
        &self,
        progress: &Progress,
        cancel: &CancellationToken,
    ) -> Result<Option<IncrementalEntry>, BackupError> {
        let _guard = self.lock().await;
        let data_dir = self.data_dir.clone();
        let files = tokio::task::spawn_blocking(move || incremental_files(&data_dir))
            .await
            .map_err(|e| BackupError::Internal(e.to_string()))?
            .map_err(|source| BackupError::File {
                path: self.data_dir.clone(),
                source,
            })?;
        if files.is_empty() {
            return Ok(None);
        }
        let written_at = files
            .iter()
            .filter_map(|f| std::fs::metadata(&f.path).and_then(|m| m.modified()).ok())
            .min()
            .map(OffsetDateTime::from)
            .unwrap_or_else(OffsetDateTime::now_utc);
        let index = self.index().await?;
        let stored = self
            .storer(&index, progress, cancel)
            .store_files(files.clone())
            .await?;
        let entry = IncrementalEntry {
            format: FORMAT,
            slot: self.slot.clone(),
            uploaded_at: OffsetDateTime::now_utc(),
            written_at,
            files: stored.into_iter().map(|(entry, _)| entry).collect(),
        };
        // The journal is left as it is: it may hold uploads of an unfinished
        // snapshot backup, which the next one reuses.
        self.catalog.put_incremental(&entry).await?;
        for file in &files {
            if let Err(e) = std::fs::remove_file(&file.path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %file.path.display(), error = %e, "cannot remove an uploaded incremental link");
                }
            }
        }
        Ok(Some(entry))
    }
}
