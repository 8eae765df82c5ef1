//! The local filesystem backend: object `a/b/c` is the file `<root>/a/b/c`.
//!
//! Every write goes to `<root>/.tmp/<random>.tmp`, is fsynced, and is renamed
//! into place (then the parent directory is fsynced), so a crash leaves either
//! the old object or the new one, never half of one; leftovers of crashed
//! writers are removed on open. Keys cannot start a segment with a dot, so the
//! scratch directory never shows up in listings. The "etag" is the file's
//! modification time and size — enough to tell one write from the next, not a
//! content hash. Each method is one attempt; retries live in `retry.rs`.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::io::AsyncRead;

use super::{ListedObject, ObjectKey, ObjectMeta, StoreError};

const SCRATCH: &str = ".tmp";
/// Temp files older than this belong to a writer that died; younger ones may be
/// in use by another process sharing the root.
const STALE_TEMP: Duration = Duration::from_secs(600);

#[derive(Debug, Clone)]
pub(crate) struct FsBackend {
    root: PathBuf,
}

impl FsBackend {
    pub(crate) fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        let scratch = root.join(SCRATCH);
        let io = |e| StoreError::io("open", &root.display().to_string(), e);
        std::fs::create_dir_all(&scratch).map_err(io)?;
        for entry in std::fs::read_dir(&scratch).map_err(io)? {
            let entry = entry.map_err(io)?;
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .map(|modified| modified.elapsed().unwrap_or_default() > STALE_TEMP)
                .unwrap_or(false);
            if stale {
                // Best effort: another process may have removed it first.
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(FsBackend { root })
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn path(&self, key: &ObjectKey) -> PathBuf {
        self.root.join(key.as_str())
    }

    fn temp_path(&self) -> PathBuf {
        self.root
            .join(SCRATCH)
            .join(format!("{}.tmp", uuid::Uuid::new_v4().simple()))
    }

    pub(crate) fn local_put(&self, key: &ObjectKey) -> LocalPut {
        LocalPut {
            key: key.to_string(),
            temp: self.temp_path(),
            target: self.path(key),
        }
    }

    /// Writes `reader` to a temp file and renames it over `key`; the temp file
    /// is removed if anything fails, or if `expected` is given and the reader
    /// yields another number of bytes.
    pub(crate) async fn put_reader<R>(
        &self,
        key: &ObjectKey,
        reader: &mut R,
        expected: Option<u64>,
    ) -> Result<u64, StoreError>
    where
        R: AsyncRead + Unpin + Send + ?Sized,
    {
        let temp = self.temp_path();
        let result = self.write_and_rename(key, &temp, reader, expected).await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&temp).await;
        }
        result
    }

    async fn write_and_rename<R>(
        &self,
        key: &ObjectKey,
        temp: &Path,
        reader: &mut R,
        expected: Option<u64>,
    ) -> Result<u64, StoreError>
    where
        R: AsyncRead + Unpin + Send + ?Sized,
    {
        let io = |e| StoreError::io("put", key.as_str(), e);
        let mut file = tokio::fs::File::create(temp).await.map_err(io)?;
        // Large writes: one blocking write per 256 KiB rather than per 8 KiB.
        let mut reader = tokio::io::BufReader::with_capacity(256 * 1024, reader);
        let size = tokio::io::copy_buf(&mut reader, &mut file)
            .await
            .map_err(io)?;
        if let Some(expected) = expected.filter(|&e| e != size) {
            return Err(StoreError::permanent(
                "put",
                key.as_str(),
                format!("{size} bytes given for an object of {expected}"),
            ));
        }
        file.sync_all().await.map_err(io)?;
        drop(file);
        let (temp, target) = (temp.to_path_buf(), self.path(key));
        tokio::task::spawn_blocking(move || rename_into(&temp, &target))
            .await
            .map_err(|e| StoreError::permanent("put", key.as_str(), e.to_string()))?
            .map_err(io)?;
        Ok(size)
    }

    pub(crate) async fn put(&self, key: &ObjectKey, body: &Bytes) -> Result<(), StoreError> {
        self.put_reader(key, &mut body.as_ref(), None)
            .await
            .map(drop)
    }

    pub(crate) async fn put_file(&self, key: &ObjectKey, source: &Path) -> Result<u64, StoreError> {
        let mut file = tokio::fs::File::open(source).await.map_err(|e| {
            StoreError::permanent(
                "put",
                key.as_str(),
                format!("cannot open {}: {e}", source.display()),
            )
        })?;
        self.put_reader(key, &mut file, None).await
    }

    pub(crate) async fn get(&self, key: &ObjectKey) -> Result<Bytes, StoreError> {
        let bytes = tokio::fs::read(self.path(key))
            .await
            .map_err(|e| StoreError::io("get", key.as_str(), e))?;
        Ok(Bytes::from(bytes))
    }

    pub(crate) async fn open_read(&self, key: &ObjectKey) -> Result<tokio::fs::File, StoreError> {
        tokio::fs::File::open(self.path(key))
            .await
            .map_err(|e| StoreError::io("get", key.as_str(), e))
    }

    pub(crate) async fn head(&self, key: &ObjectKey) -> Result<ObjectMeta, StoreError> {
        let meta = tokio::fs::metadata(self.path(key))
            .await
            .map_err(|e| StoreError::io("head", key.as_str(), e))?;
        if !meta.is_file() {
            return Err(StoreError::NotFound {
                key: key.to_string(),
            });
        }
        let modified = meta
            .modified()
            .unwrap_or(SystemTime::UNIX_EPOCH)
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Ok(ObjectMeta {
            size: meta.len(),
            etag: format!("{:x}-{:x}", modified.as_nanos(), meta.len()),
        })
    }

    pub(crate) async fn list(&self, prefix: &str) -> Result<Vec<ListedObject>, StoreError> {
        let root = self.root.clone();
        let prefix = prefix.to_string();
        tokio::task::spawn_blocking(move || list_blocking(&root, &prefix))
            .await
            .map_err(|e| StoreError::permanent("list", "", format!("listing task failed: {e}")))?
    }

    /// Deleting a missing object succeeds, as on S3.
    pub(crate) async fn delete(&self, key: &ObjectKey) -> Result<(), StoreError> {
        let path = self.path(key);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(StoreError::io("delete", key.as_str(), e)),
        }
        // Prune directories left empty, so listings do not walk dead trees;
        // `remove_dir` fails on the first non-empty one, which stops the walk.
        let mut dir = path.parent();
        while let Some(d) = dir {
            if d == self.root || tokio::fs::remove_dir(d).await.is_err() {
                break;
            }
            dir = d.parent();
        }
        Ok(())
    }
}

fn list_blocking(root: &Path, prefix: &str) -> Result<Vec<ListedObject>, StoreError> {
    let io = |e| StoreError::io("list", prefix, e);
    // Start at the deepest directory the prefix names completely.
    let start = match prefix.rsplit_once('/') {
        Some((dir, _)) => root.join(dir),
        None => root.to_path_buf(),
    };
    let mut found = Vec::new();
    let mut pending = vec![start];
    while let Some(dir) = pending.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => continue,
            Err(e) => return Err(io(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io)?;
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let file_type = entry.file_type().map_err(io)?;
            let path = entry.path();
            if file_type.is_dir() {
                pending.push(path);
                continue;
            }
            let Ok(relative) = path.strip_prefix(root) else {
                continue;
            };
            let Some(relative) = relative.to_str() else {
                continue;
            };
            if !relative.starts_with(prefix) {
                continue;
            }
            // A file whose name is no valid key was not written by this store.
            let Ok(key) = ObjectKey::new(relative) else {
                continue;
            };
            let size = entry.metadata().map_err(io)?.len();
            found.push(ListedObject { key, size });
        }
    }
    found.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(found)
}

/// Renames the written `temp` over `target`, creating its directory, and
/// syncs the directory entry (the rename is durable only then). A delete
/// prunes directories it leaves empty, so a directory can go between its
/// creation and the rename (`NotFound`), or between `mkdir` finding it and
/// `create_dir_all` checking it (`AlreadyExists`): that is tried again.
fn rename_into(temp: &Path, target: &Path) -> std::io::Result<()> {
    use std::io::ErrorKind::{AlreadyExists, NotFound};
    let parent = target.parent().expect("a key path has a parent");
    let mut tries = 0;
    loop {
        match std::fs::create_dir_all(parent).and_then(|()| std::fs::rename(temp, target)) {
            Err(e)
                if matches!(e.kind(), NotFound | AlreadyExists) && tries < 5 && temp.exists() =>
            {
                tries += 1;
            }
            Err(e) => return Err(e),
            Ok(()) => return std::fs::File::open(parent)?.sync_all(),
        }
    }
}

/// An object written by a blocking writer on this machine, as `put_reader`
/// writes one: a temp file under the store, synced, renamed over the key,
/// and the directory entry synced.
#[derive(Debug)]
pub struct LocalPut {
    key: String,
    temp: PathBuf,
    target: PathBuf,
}

impl LocalPut {
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The temp file to write, around the page cache where the filesystem
    /// can (an object is written once and read rarely), through a buffer of
    /// `capacity` bytes.
    pub fn create(&self, capacity: usize) -> std::io::Result<crate::direct::OnceWriter> {
        crate::direct::OnceWriter::create(&self.temp, capacity)
    }

    /// Makes the written temp file the object.
    pub fn commit(&self, file: std::fs::File) -> std::io::Result<()> {
        file.sync_all()?;
        drop(file);
        rename_into(&self.temp, &self.target)
    }

    /// Removes the temp file after a failure.
    pub fn abandon(&self) {
        let _ = std::fs::remove_file(&self.temp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two writers each put an object and delete it again in one directory:
    /// every delete that leaves the directory empty prunes it, also between
    /// the other's creation of it and its rename. No put may fail for that.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_put_survives_a_delete_pruning_its_directory() {
        const ROUNDS: usize = 1500;
        let root = tempfile::tempdir().expect("temp dir");
        let store = FsBackend::open(root.path()).expect("open");
        let writer = |name: &'static str| {
            let store = store.clone();
            tokio::spawn(async move {
                let key = ObjectKey::new(format!("slot/sst/ks/{name}")).expect("key");
                let body = Bytes::from_static(b"component");
                for round in 0..ROUNDS {
                    if let Err(e) = store.put(&key, &body).await {
                        panic!("put {round} of {name} failed: {e}");
                    }
                    store.delete(&key).await.expect("delete");
                }
            })
        };
        let (a, b) = (writer("a"), writer("b"));
        a.await.expect("writer a");
        b.await.expect("writer b");
        assert!(
            !root.path().join("slot").exists(),
            "the last delete pruned the tree"
        );
    }
}
