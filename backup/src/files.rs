//! Storing a set of local SSTable files for a slot: skip what the slot already
//! stores (same name, size and BLAKE3), upload the rest in parallel, and
//! return the entries a manifest or log entry will name. Used by snapshot
//! backups and by incremental uploads alike.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::error::BackupError;
use crate::index::{Journal, StoredIndex};
use crate::layout;
use crate::manifest::{Compression, FileEntry, SlotRef, Totals};
use crate::store::ObjectStore;
use crate::upload::{hash_file, streamed, upload_file, Throttle};

/// A file to store: where it is and which table it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    pub keyspace: String,
    pub table_dir: String,
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
    pub modified_at: Option<time::OffsetDateTime>,
}

/// The files of snapshot `tag`: `<data>/<ks>/<table dir>/snapshots/<tag>/*`.
pub fn snapshot_files(data_dir: &Path, tag: &str) -> std::io::Result<Vec<SourceFile>> {
    table_subdir_files(data_dir, &Path::new("snapshots").join(tag))
}

/// The tags of the snapshots under `data_dir` that start with `prefix`
/// (`<data>/<ks>/<table dir>/snapshots/<tag>`), sorted.
pub fn snapshot_tags(data_dir: &Path, prefix: &str) -> std::io::Result<Vec<String>> {
    if !data_dir.exists() {
        return Ok(Vec::new());
    }
    let mut tags = std::collections::BTreeSet::new();
    for (_, table) in table_dirs(data_dir)? {
        let Ok(snapshots) = std::fs::read_dir(table.join("snapshots")) else {
            continue;
        };
        for snapshot in snapshots.flatten() {
            let tag = snapshot.file_name().to_string_lossy().into_owned();
            if tag.starts_with(prefix) {
                tags.insert(tag);
            }
        }
    }
    Ok(tags.into_iter().collect())
}

/// Every table directory under `data_dir`, with its keyspace.
fn table_dirs(data_dir: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for keyspace in std::fs::read_dir(data_dir)? {
        let keyspace = keyspace?;
        if !keyspace.file_type()?.is_dir() {
            continue;
        }
        let ks = keyspace.file_name().to_string_lossy().into_owned();
        for table in layout::table_dirs(data_dir, &ks)? {
            out.push((ks.clone(), table.path));
        }
    }
    Ok(out)
}

/// The incremental backup links: `<data>/<ks>/<table dir>/backups/*`.
pub fn incremental_files(data_dir: &Path) -> std::io::Result<Vec<SourceFile>> {
    table_subdir_files(data_dir, Path::new("backups"))
}

fn table_subdir_files(data_dir: &Path, subdir: &Path) -> std::io::Result<Vec<SourceFile>> {
    let mut out = Vec::new();
    for (ks, table) in table_dirs(data_dir)? {
        let dir = table.join(subdir);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let table_dir = table
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                // Gone between listing and stat (a removed link): skip.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if meta.is_file() && layout::is_sstable_component(&name) {
                out.push(SourceFile {
                    keyspace: ks.clone(),
                    table_dir: table_dir.clone(),
                    name,
                    path: entry.path(),
                    size: meta.len(),
                    modified_at: meta.modified().ok().map(time::OffsetDateTime::from),
                });
            }
        }
    }
    out.sort_by(|a, b| {
        (&a.keyspace, &a.table_dir, &a.name).cmp(&(&b.keyspace, &b.table_dir, &b.name))
    });
    Ok(out)
}

/// How files are stored.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    /// Files uploaded at once.
    pub concurrency: usize,
    /// Files of at least `large_file` bytes uploaded at once when the store
    /// buffers them (compressed files to S3; keep this low to bound memory).
    /// Files that stream from disk do not count.
    pub large_concurrency: usize,
    pub large_file: u64,
    pub zstd_level: i32,
    /// Compress `Data.db` even when Cassandra already compressed it (a
    /// `CompressionInfo.db` exists): costs CPU for a few percent.
    pub compress_compressed_data: bool,
    pub throttle: Throttle,
    /// Tries per file when the store fails transiently (each request is
    /// already retried by the store).
    pub file_attempts: u32,
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            concurrency: 4,
            large_concurrency: 1,
            large_file: 8 * 1024 * 1024,
            zstd_level: 3,
            compress_compressed_data: false,
            throttle: Throttle::unlimited(),
            file_attempts: 3,
        }
    }
}

/// The encoding of a component: raw for `Data.db` that Cassandra compressed
/// already (unless configured otherwise), zstd for everything else.
pub fn compression_for(
    name: &str,
    siblings: &HashSet<String>,
    settings: &StoreSettings,
) -> Compression {
    if let Some(prefix) = name.strip_suffix("Data.db") {
        let compressed = siblings.contains(&format!("{prefix}CompressionInfo.db"));
        if compressed && !settings.compress_compressed_data {
            return Compression::None;
        }
    }
    Compression::Zstd
}

/// Live counters of a running job, read by the API while it runs.
#[derive(Debug, Default)]
pub struct Progress {
    pub files_total: AtomicU64,
    pub files_done: AtomicU64,
    pub bytes_total: AtomicU64,
    /// File bytes read so far, uploaded or hashed for reuse.
    pub bytes_done: AtomicU64,
    pub files_uploaded: AtomicU64,
    pub bytes_uploaded: AtomicU64,
    pub stored_bytes_uploaded: AtomicU64,
    pub files_reused: AtomicU64,
    pub bytes_reused: AtomicU64,
    pub errors: Mutex<Vec<String>>,
    started: Mutex<Option<Instant>>,
    /// Bytes read by uploads still running (each attempt counts its own, so a
    /// failed attempt is not counted twice).
    in_flight: Mutex<Vec<Arc<AtomicU64>>>,
}

/// A snapshot of [`Progress`] for JSON.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ProgressView {
    pub files_total: u64,
    pub files_done: u64,
    pub bytes_total: u64,
    pub bytes_done: u64,
    pub files_uploaded: u64,
    pub bytes_uploaded: u64,
    pub files_reused: u64,
    pub bytes_reused: u64,
    /// File bytes per second since the transfer started.
    pub rate_bytes_per_sec: f64,
    pub eta_secs: Option<f64>,
    pub errors: Vec<String>,
}

impl Progress {
    pub fn start(&self, files: &[SourceFile]) {
        self.start_totals(files.len() as u64, files.iter().map(|f| f.size).sum());
    }

    pub fn start_totals(&self, files: u64, bytes: u64) {
        self.files_total.store(files, Ordering::Relaxed);
        self.bytes_total.store(bytes, Ordering::Relaxed);
        *self.started.lock().expect("progress lock") = Some(Instant::now());
    }

    /// A counter for one upload attempt, included in `bytes_done` while it runs.
    pub fn track(&self) -> Arc<AtomicU64> {
        let counter = Arc::new(AtomicU64::new(0));
        self.in_flight
            .lock()
            .expect("progress lock")
            .push(counter.clone());
        counter
    }

    /// Ends an attempt; a successful one's bytes are kept.
    pub fn untrack(&self, counter: &Arc<AtomicU64>, succeeded: bool) {
        self.in_flight
            .lock()
            .expect("progress lock")
            .retain(|c| !Arc::ptr_eq(c, counter));
        if succeeded {
            self.bytes_done
                .fetch_add(counter.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }

    pub fn error(&self, message: String) {
        self.errors.lock().expect("progress lock").push(message);
    }

    pub fn view(&self) -> ProgressView {
        let in_flight: u64 = self
            .in_flight
            .lock()
            .expect("progress lock")
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum();
        let bytes_done = self.bytes_done.load(Ordering::Relaxed) + in_flight;
        let bytes_total = self.bytes_total.load(Ordering::Relaxed);
        let elapsed = self
            .started
            .lock()
            .expect("progress lock")
            .map(|s| s.elapsed())
            .unwrap_or(Duration::ZERO);
        let rate = if elapsed.as_secs_f64() > 0.0 {
            bytes_done as f64 / elapsed.as_secs_f64()
        } else {
            0.0
        };
        let eta = (rate > 0.0 && bytes_total >= bytes_done)
            .then(|| (bytes_total - bytes_done) as f64 / rate);
        ProgressView {
            files_total: self.files_total.load(Ordering::Relaxed),
            files_done: self.files_done.load(Ordering::Relaxed),
            bytes_total,
            bytes_done,
            files_uploaded: self.files_uploaded.load(Ordering::Relaxed),
            bytes_uploaded: self.bytes_uploaded.load(Ordering::Relaxed),
            files_reused: self.files_reused.load(Ordering::Relaxed),
            bytes_reused: self.bytes_reused.load(Ordering::Relaxed),
            rate_bytes_per_sec: rate,
            eta_secs: eta,
            errors: self.errors.lock().expect("progress lock").clone(),
        }
    }
}

/// Sums the entries into totals; `uploaded` says which were uploaded now.
pub fn totals(entries: &[(FileEntry, bool)]) -> Totals {
    let mut t = Totals::default();
    for (entry, uploaded) in entries {
        t.files += 1;
        t.bytes += entry.size;
        t.stored_bytes += entry.stored_size;
        if *uploaded {
            t.uploaded_files += 1;
            t.uploaded_bytes += entry.size;
        } else {
            t.reused_files += 1;
            t.reused_bytes += entry.size;
        }
    }
    t
}

/// Everything one `store_files` call needs.
pub struct FileStorer<'a> {
    pub store: &'a ObjectStore,
    pub slot: &'a SlotRef,
    pub index: &'a Mutex<StoredIndex>,
    pub journal: Option<&'a Journal>,
    pub settings: &'a StoreSettings,
    pub progress: &'a Progress,
    pub cancel: &'a CancellationToken,
}

impl FileStorer<'_> {
    /// Stores every file; returns each file's entry and whether it was
    /// uploaded now (false: reused). Every file is attempted; the first error
    /// is returned after the others finish, except that a permanent store
    /// error (a missing bucket, denied access) stops the rest at once.
    pub async fn store_files(
        &self,
        mut files: Vec<SourceFile>,
    ) -> Result<Vec<(FileEntry, bool)>, BackupError> {
        self.progress.start(&files);
        // Largest first: the long uploads start early and overlap the rest.
        files.sort_by_key(|f| std::cmp::Reverse(f.size));
        let siblings: HashSet<String> = files
            .iter()
            .map(|f| format!("{}/{}/{}", f.keyspace, f.table_dir, f.name))
            .collect();
        let large = Semaphore::new(self.settings.large_concurrency.max(1));
        let stop = self.cancel.child_token();
        let results: Vec<Result<(FileEntry, bool), BackupError>> = futures::stream::iter(files)
            .map(|file| {
                let siblings = &siblings;
                let large = &large;
                let stop = &stop;
                async move {
                    if stop.is_cancelled() {
                        return Err(BackupError::Cancelled);
                    }
                    let result = tokio::select! {
                        r = self.store_one(&file, siblings, large) => r,
                        _ = stop.cancelled() => Err(BackupError::Cancelled),
                    };
                    match &result {
                        Ok(_) => {
                            self.progress.files_done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(BackupError::Cancelled) => {}
                        Err(e) => {
                            self.progress.error(e.to_string());
                            if matches!(e, BackupError::Store(s) if !s.is_retryable()) {
                                stop.cancel();
                            }
                        }
                    }
                    result
                }
            })
            .buffer_unordered(self.settings.concurrency.max(1))
            .collect()
            .await;
        let mut out = Vec::with_capacity(results.len());
        let mut first_error = None;
        for result in results {
            match result {
                Ok(done) => out.push(done),
                // Report what stopped the work, not the cancellations it caused.
                Err(BackupError::Cancelled) if first_error.is_some() => {}
                Err(e) => {
                    if first_error.is_none() || matches!(first_error, Some(BackupError::Cancelled))
                    {
                        first_error = Some(e);
                    }
                }
            }
        }
        if self.cancel.is_cancelled() {
            return Err(BackupError::Cancelled);
        }
        match first_error {
            Some(e) => Err(e),
            None => {
                out.sort_by_key(|(entry, _)| entry.relative_path());
                Ok(out)
            }
        }
    }

    async fn store_one(
        &self,
        file: &SourceFile,
        siblings: &HashSet<String>,
        large: &Semaphore,
    ) -> Result<(FileEntry, bool), BackupError> {
        let copies = self
            .index
            .lock()
            .expect("index lock")
            .copies(&file.keyspace, &file.table_dir, &file.name)
            .to_vec();
        let same_size: Vec<&FileEntry> = copies.iter().filter(|c| c.size == file.size).collect();
        let mut known_hash = None;
        if !same_size.is_empty() {
            let (hash, size) = hash_file(&file.path).await?;
            self.progress.bytes_done.fetch_add(size, Ordering::Relaxed);
            if let Some(copy) = same_size.iter().find(|c| c.hash == hash && c.size == size) {
                self.progress.files_reused.fetch_add(1, Ordering::Relaxed);
                self.progress
                    .bytes_reused
                    .fetch_add(size, Ordering::Relaxed);
                return Ok(((*copy).clone(), false));
            }
            known_hash = Some(hash);
        }
        let table_siblings: HashSet<String> = siblings
            .iter()
            .filter_map(|s| {
                s.strip_prefix(&format!("{}/{}/", file.keyspace, file.table_dir))
                    .map(str::to_string)
            })
            .collect();
        let compression = compression_for(&file.name, &table_siblings, self.settings);
        let suffix = match compression {
            Compression::Zstd => ".zst",
            Compression::None => "",
        };
        // The plain name, unless another content already uses it: then the
        // name with the content hash (hashed first, so the key is known).
        let mut object = format!("{}{suffix}", file.name);
        let plain_key = self
            .slot
            .sstable_key(&file.keyspace, &file.table_dir, &object)?;
        if !copies.is_empty()
            || self
                .index
                .lock()
                .expect("index lock")
                .key_in_use(plain_key.as_str())
        {
            let hash = match known_hash.take() {
                Some(hash) => hash,
                None => hash_file(&file.path).await?.0,
            };
            object = format!("{}.{}{suffix}", file.name, &hash[..16]);
        }
        let key = self
            .slot
            .sstable_key(&file.keyspace, &file.table_dir, &object)?;
        // A large file holds the store's part buffers, unless it streams.
        let _permit = if file.size >= self.settings.large_file && !streamed(self.store, compression)
        {
            Some(large.acquire().await.expect("never closed"))
        } else {
            None
        };
        let mut attempt = 0;
        let uploaded = loop {
            attempt += 1;
            let counter = self.progress.track();
            let result = upload_file(
                self.store,
                &key,
                &file.path,
                compression,
                self.settings.zstd_level,
                &self.settings.throttle,
                Some(counter.clone()),
            )
            .await;
            self.progress.untrack(&counter, result.is_ok());
            match result {
                Ok(done) => break done,
                Err(e) if e.is_retryable() && attempt < self.settings.file_attempts => {
                    tracing::warn!(file = %file.path.display(), attempt, error = %e, "upload failed; trying the file again");
                }
                Err(e) => return Err(e),
            }
        };
        let entry = FileEntry {
            keyspace: file.keyspace.clone(),
            table_dir: file.table_dir.clone(),
            name: file.name.clone(),
            size: uploaded.size,
            hash: uploaded.hash,
            key: key.as_str().to_string(),
            stored_size: uploaded.stored_size,
            compression,
            modified_at: file.modified_at,
        };
        if let Some(journal) = self.journal {
            journal.record(&entry)?;
        }
        self.index.lock().expect("index lock").insert(entry.clone());
        self.progress.files_uploaded.fetch_add(1, Ordering::Relaxed);
        self.progress
            .bytes_uploaded
            .fetch_add(entry.size, Ordering::Relaxed);
        self.progress
            .stored_bytes_uploaded
            .fetch_add(entry.stored_size, Ordering::Relaxed);
        Ok((entry, true))
    }
}
