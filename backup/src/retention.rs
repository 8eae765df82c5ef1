//! Retention, purge and verification of a slot's backups.
//!
//! Purge is mark and sweep: decide which manifests go (by age and/or count,
//! never the newest), delete those manifests first, then the incremental log
//! entries older than every kept backup, then every stored object that no kept
//! manifest, kept log entry or pending upload names. A crash at any point
//! leaves kept backups whole: objects go only after whatever named them.

use std::collections::HashSet;

use futures::StreamExt;
use serde::Serialize;
use time::OffsetDateTime;

use crate::catalog::Catalog;
use crate::error::BackupError;
use crate::manifest::{BackupId, FileEntry, NodeManifest, SlotRef};
use crate::store::{ObjectKey, StoreError};
use crate::upload::check_object;

/// Which backups to keep. A backup is kept if any set rule keeps it; with no
/// rule set everything is kept. The newest backup is always kept.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Retention {
    /// Keep the newest N backups.
    pub keep_last: Option<u32>,
    /// Keep backups younger than this many days.
    pub keep_days: Option<u32>,
}

impl Retention {
    /// The ids to delete among `manifests` (oldest first), as of `now`.
    pub fn expired(&self, manifests: &[NodeManifest], now: OffsetDateTime) -> Vec<BackupId> {
        if self.keep_last.is_none() && self.keep_days.is_none() {
            return Vec::new();
        }
        let n = manifests.len();
        manifests
            .iter()
            .enumerate()
            .filter(|(i, m)| {
                let newest = *i + 1 == n;
                let by_count = self.keep_last.is_some_and(|k| n - i <= k as usize);
                let by_age = self
                    .keep_days
                    .is_some_and(|d| now - m.started_at < time::Duration::days(d as i64));
                !(newest || by_count || by_age)
            })
            .map(|(_, m)| m.backup_id.clone())
            .collect()
    }
}

/// What a purge deletes (or, in a dry run, would delete).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct PurgePlan {
    pub backups: Vec<BackupId>,
    pub kept: Vec<BackupId>,
    pub log_entries: Vec<String>,
    pub objects: Vec<String>,
    pub bytes: u64,
}

/// Plans the purge of `slot`: the `delete` backups (chosen by a retention
/// rule, or named by a user), and every object nothing kept names.
/// `pending` are the keys of uploads not yet named by a manifest (the
/// node's journal): never swept.
pub async fn plan_purge(
    catalog: &Catalog,
    slot: &SlotRef,
    delete: &[BackupId],
    pending: &HashSet<String>,
) -> Result<PurgePlan, BackupError> {
    let manifests = catalog.manifests(slot).await?;
    let (gone, kept): (Vec<&NodeManifest>, Vec<&NodeManifest>) = manifests
        .iter()
        .partition(|m| delete.contains(&m.backup_id));
    let log = catalog.incremental_log(slot).await?;
    // Log entries before the oldest kept backup serve no restore any more
    // (a point in time needs a snapshot at or before it). With no backup kept
    // the log is all there is: keep it.
    let oldest_kept = kept.iter().map(|m| m.started_at).min();
    let (old_log, kept_log): (Vec<_>, Vec<_>) = log
        .iter()
        .partition(|(_, e)| oldest_kept.is_some_and(|t| e.uploaded_at < t));
    let mut referenced: HashSet<&str> = pending.iter().map(String::as_str).collect();
    for m in &kept {
        referenced.extend(m.files.iter().map(|f| f.key.as_str()));
    }
    for (_, e) in &kept_log {
        referenced.extend(e.files.iter().map(|f| f.key.as_str()));
    }
    let listed = catalog.store().list(&slot.sstable_prefix()).await?;
    let mut plan = PurgePlan {
        backups: gone.iter().map(|m| m.backup_id.clone()).collect(),
        kept: kept.iter().map(|m| m.backup_id.clone()).collect(),
        log_entries: old_log.iter().map(|(k, _)| k.to_string()).collect(),
        ..PurgePlan::default()
    };
    for object in listed {
        if !referenced.contains(object.key.as_str()) {
            plan.bytes += object.size;
            plan.objects.push(object.key.to_string());
        }
    }
    Ok(plan)
}

/// Carries out a plan: manifests, then log entries, then objects (in batches
/// of up to 1,000 keys on S3).
pub async fn execute_purge(
    catalog: &Catalog,
    slot: &SlotRef,
    plan: &PurgePlan,
) -> Result<(), BackupError> {
    for id in &plan.backups {
        catalog.delete_manifest(slot, id).await?;
    }
    let keys = |names: &[String]| -> Result<Vec<ObjectKey>, StoreError> {
        names.iter().map(|k| ObjectKey::new(k.clone())).collect()
    };
    catalog
        .store()
        .delete_many(&keys(&plan.log_entries)?)
        .await?;
    catalog.store().delete_many(&keys(&plan.objects)?).await?;
    Ok(())
}

/// What verification found.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct VerifyReport {
    pub deep: bool,
    pub files: u64,
    pub bytes: u64,
    /// `path: problem` for every bad file; empty when all is well.
    pub problems: Vec<String>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Checks that every file's object exists with its stored size; with `deep`,
/// downloads each and checks its size and hash.
pub async fn verify_files(
    catalog: &Catalog,
    files: &[FileEntry],
    deep: bool,
    concurrency: usize,
) -> VerifyReport {
    let store = catalog.store().clone();
    let problems: Vec<Option<String>> = futures::stream::iter(files.to_vec())
        .map(|f| {
            let store = store.clone();
            async move {
                let key = match f.object_key() {
                    Ok(key) => key,
                    Err(e) => return Some(format!("{}: {e}", f.relative_path())),
                };
                let problem = match store.head(&key).await {
                    Err(StoreError::NotFound { .. }) => Some(format!("object {key} is missing")),
                    Err(e) => Some(format!("cannot check {key}: {e}")),
                    Ok(meta) if meta.size != f.stored_size => Some(format!(
                        "object {key} has {} bytes, the manifest says {}",
                        meta.size, f.stored_size
                    )),
                    Ok(_) if deep => check_object(&store, &key, f.compression, f.size, &f.hash)
                        .await
                        .err()
                        .map(|e| format!("object {key}: {e}")),
                    Ok(_) => None,
                };
                problem.map(|p| format!("{}: {p}", f.relative_path()))
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let mut problems: Vec<String> = problems.into_iter().flatten().collect();
    problems.sort();
    VerifyReport {
        deep,
        files: files.len() as u64,
        bytes: files.iter().map(|f| f.size).sum(),
        problems,
    }
}
