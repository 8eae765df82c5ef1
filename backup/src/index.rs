//! What a slot already stores, for deduplication: every file named by the
//! slot's manifests and incremental log, plus the uploads of an unfinished
//! backup recorded in the node's local journal.
//!
//! The journal is what makes a crashed backup resumable without uploading
//! finished files again: each upload is appended (and fsynced) once the store
//! has the object. A journal entry is trusted only after a `HEAD` shows the
//! object with the recorded size; the journal is cleared once a manifest names
//! its entries.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use futures::StreamExt;

use crate::catalog::Catalog;
use crate::error::BackupError;
use crate::manifest::{FileEntry, SlotRef};
use crate::store::StoreError;

/// A file's identity within a slot: keyspace, table directory, file name.
pub type FileId = (String, String, String);

fn file_id(entry: &FileEntry) -> FileId {
    (
        entry.keyspace.clone(),
        entry.table_dir.clone(),
        entry.name.clone(),
    )
}

/// The local record of uploads not yet named by a manifest.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: Mutex<Option<std::fs::File>>,
}

impl Journal {
    pub fn open(path: impl Into<PathBuf>) -> Self {
        Journal {
            path: path.into(),
            file: Mutex::new(None),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one upload and syncs it to disk.
    pub fn record(&self, entry: &FileEntry) -> Result<(), BackupError> {
        let io = |source| BackupError::File {
            path: self.path.clone(),
            source,
        };
        let mut guard = self.file.lock().expect("journal lock");
        if guard.is_none() {
            if let Some(parent) = self.path.parent() {
                std::fs::create_dir_all(parent).map_err(io)?;
            }
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .map_err(io)?;
            *guard = Some(file);
        }
        let file = guard.as_mut().expect("opened above");
        let mut line = serde_json::to_vec(entry).expect("entries serialize");
        line.push(b'\n');
        file.write_all(&line).map_err(io)?;
        file.sync_data().map_err(io)
    }

    /// Every recorded upload; a torn last line (a crash mid-write) is skipped.
    pub fn entries(&self) -> Result<Vec<FileEntry>, BackupError> {
        let file = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(BackupError::File {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        let mut out = Vec::new();
        for line in std::io::BufReader::new(file).lines() {
            let Ok(line) = line else { break };
            if let Ok(entry) = serde_json::from_str::<FileEntry>(&line) {
                out.push(entry);
            }
        }
        Ok(out)
    }

    /// Forgets every entry (they are named by a manifest or the log now).
    pub fn clear(&self) -> Result<(), BackupError> {
        let mut guard = self.file.lock().expect("journal lock");
        *guard = None;
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(BackupError::File {
                path: self.path.clone(),
                source,
            }),
        }
    }
}

/// The slot's stored files by identity, and every key in use.
#[derive(Debug, Default)]
pub struct StoredIndex {
    files: HashMap<FileId, Vec<FileEntry>>,
    keys: HashSet<String>,
}

impl StoredIndex {
    /// Loads the index of `slot`: manifests, incremental log, and the journal
    /// entries whose objects are still there.
    pub async fn load(
        catalog: &Catalog,
        slot: &SlotRef,
        journal: Option<&Journal>,
    ) -> Result<Self, BackupError> {
        let mut index = StoredIndex::default();
        for manifest in catalog.manifests(slot).await? {
            index.extend(manifest.files);
        }
        for (_, entry) in catalog.incremental_log(slot).await? {
            index.extend(entry.files);
        }
        if let Some(journal) = journal {
            let pending: Vec<FileEntry> = journal
                .entries()?
                .into_iter()
                .filter(|e| !index.keys.contains(&e.key))
                .collect();
            let store = catalog.store();
            let checked: Vec<Option<FileEntry>> = futures::stream::iter(pending)
                .map(|entry| async move {
                    let key = entry.object_key()?;
                    match store.head(&key).await {
                        Ok(meta) if meta.size == entry.stored_size => Ok(Some(entry)),
                        Ok(_) | Err(StoreError::NotFound { .. }) => Ok(None),
                        Err(e) => Err(BackupError::from(e)),
                    }
                })
                .buffer_unordered(16)
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .collect::<Result<_, _>>()?;
            index.extend(checked.into_iter().flatten());
        }
        Ok(index)
    }

    pub fn extend(&mut self, entries: impl IntoIterator<Item = FileEntry>) {
        for entry in entries {
            self.insert(entry);
        }
    }

    pub fn insert(&mut self, entry: FileEntry) {
        self.keys.insert(entry.key.clone());
        let copies = self.files.entry(file_id(&entry)).or_default();
        if !copies
            .iter()
            .any(|c| c.key == entry.key && c.hash == entry.hash)
        {
            copies.push(entry);
        }
    }

    /// Stored copies of the file with this identity (usually one).
    pub fn copies(&self, keyspace: &str, table_dir: &str, name: &str) -> &[FileEntry] {
        self.files
            .get(&(
                keyspace.to_string(),
                table_dir.to_string(),
                name.to_string(),
            ))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// A stored copy with this size and hash.
    pub fn find(
        &self,
        keyspace: &str,
        table_dir: &str,
        name: &str,
        size: u64,
        hash: &str,
    ) -> Option<&FileEntry> {
        self.copies(keyspace, table_dir, name)
            .iter()
            .find(|c| c.size == size && c.hash == hash)
    }

    pub fn key_in_use(&self, key: &str) -> bool {
        self.keys.contains(key)
    }

    pub fn len(&self) -> usize {
        self.files.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}
