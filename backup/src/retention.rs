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
///
/// The rules are about backups of all keyspaces: a backup of some keyspaces
/// only (`-k`) never counts toward `keep_last`, so it can never make the
/// last full backups expire. It is kept while it is younger than
/// `keep_days`, or newer than the oldest full backup kept (it adds to what
/// those cover); older partial backups go. A slot with no full backup at
/// all applies the rules to its partial backups alone.
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
        let by_age = |m: &NodeManifest| {
            self.keep_days
                .is_some_and(|d| now - m.started_at < time::Duration::days(d as i64))
        };
        let full: Vec<&NodeManifest> = manifests
            .iter()
            .filter(|m| m.keyspaces.is_empty())
            .collect();
        // Of `ranked` (oldest first): the newest, the newest `keep_last`,
        // and those young enough.
        let keep_among = |ranked: &[&NodeManifest]| -> HashSet<BackupId> {
            let n = ranked.len();
            ranked
                .iter()
                .enumerate()
                .filter(|(i, m)| {
                    *i + 1 == n || self.keep_last.is_some_and(|k| n - i <= k as usize) || by_age(m)
                })
                .map(|(_, m)| m.backup_id.clone())
                .collect()
        };
        let mut kept = if full.is_empty() {
            keep_among(&manifests.iter().collect::<Vec<_>>())
        } else {
            keep_among(&full)
        };
        let oldest_full_kept = full
            .iter()
            .filter(|m| kept.contains(&m.backup_id))
            .map(|m| m.started_at)
            .min();
        if let Some(oldest) = oldest_full_kept {
            kept.extend(
                manifests
                    .iter()
                    .filter(|m| !m.keyspaces.is_empty() && (by_age(m) || m.started_at >= oldest))
                    .map(|m| m.backup_id.clone()),
            );
        }
        manifests
            .iter()
            .filter(|m| !kept.contains(&m.backup_id))
            .map(|m| m.backup_id.clone())
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
pub(crate) async fn plan_purge(
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
pub(crate) async fn execute_purge(
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
                    Ok(_) if deep => check_object(&store, &key, &f)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{Totals, FORMAT};

    /// A manifest started `days_ago` days before `now()`, of `keyspaces`
    /// (empty: all); its id says which it is.
    fn backup(name: &str, days_ago: i64, keyspaces: &[&str]) -> NodeManifest {
        let at = now() - time::Duration::days(days_ago);
        NodeManifest {
            format: FORMAT,
            backup_id: BackupId::parse(&format!("{}-{name}", at.unix_timestamp())).unwrap(),
            slot: SlotRef {
                cluster: "orders".into(),
                dc: "dc1".into(),
                slot: 0,
            },
            rack: "r1".into(),
            address: "127.0.0.1".into(),
            started_at: at,
            finished_at: at,
            cassandra_version: "5.0.9".into(),
            partitioner: "org.apache.cassandra.dht.Murmur3Partitioner".into(),
            tokens: vec!["0".into()],
            keyspaces: keyspaces.iter().map(|k| k.to_string()).collect(),
            schema: String::new(),
            files: Vec::new(),
            totals: Totals::default(),
        }
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
    }

    /// The names (id suffixes) of what `rule` expires among `manifests`.
    fn expired(rule: Retention, manifests: &[NodeManifest]) -> Vec<String> {
        rule.expired(manifests, now())
            .iter()
            .map(|id| id.as_str().split_once('-').unwrap().1.to_string())
            .collect()
    }

    #[test]
    fn partial_backups_never_make_the_full_ones_expire() {
        let last = |k| Retention {
            keep_last: Some(k),
            keep_days: None,
        };
        let days = |d| Retention {
            keep_last: None,
            keep_days: Some(d),
        };
        // Two full backups, then three of one keyspace only.
        let m = [
            backup("full1", 20, &[]),
            backup("full2", 10, &[]),
            backup("billing1", 3, &["billing"]),
            backup("billing2", 2, &["billing"]),
            backup("billing3", 1, &["billing"]),
        ];
        // Counting every backup alike would keep only the three partial ones.
        assert_eq!(expired(last(3), &m), Vec::<String>::new());
        assert_eq!(expired(last(1), &m), vec!["full1"]);
        // By age: every full backup is older than 7 days; the newest is kept.
        assert_eq!(expired(days(7), &m), vec!["full1"]);
        // A partial backup older than the oldest kept full one goes, unless
        // it is young enough.
        let m = [
            backup("full1", 30, &[]),
            backup("billing1", 25, &["billing"]),
            backup("full2", 20, &[]),
            backup("billing2", 15, &["billing"]),
            backup("full3", 10, &[]),
        ];
        assert_eq!(
            expired(last(1), &m),
            vec!["full1", "billing1", "full2", "billing2"]
        );
        assert_eq!(expired(last(2), &m), vec!["full1", "billing1"]);
        assert_eq!(
            expired(
                Retention {
                    keep_last: Some(1),
                    keep_days: Some(16)
                },
                &m
            ),
            vec!["full1", "billing1", "full2"]
        );
        // With no full backup at all, the partial ones follow the rules.
        let m = [
            backup("a", 3, &["billing"]),
            backup("b", 2, &["shop"]),
            backup("c", 1, &["billing"]),
        ];
        assert_eq!(expired(last(2), &m), vec!["a"]);
        assert_eq!(expired(days(1), &m), vec!["a", "b"]);
        assert_eq!(expired(Retention::default(), &m), Vec::<String>::new());
    }
}
