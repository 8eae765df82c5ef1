//! The compare-and-swap store on a local filesystem: the embedded mode's
//! coordinator, safe between tasks, threads and processes on one machine.
//!
//! Layout under the root: `<key>` holds the value behind a one-line header with
//! its version; `.cas/tmp/` holds files being written; `.cas/locks/<key>` are the
//! lock files. Creation writes a temp file and hard-links it to the key, which
//! fails atomically if the key exists (`link(2)` never replaces). Replacement and
//! deletion take an exclusive `flock(2)` on the key's lock file, compare the
//! version, then rename a temp file over the key or unlink it; readers never
//! lock, since rename swaps whole files. Versions are `<generation>.<random>`: the
//! random part keeps a key that was deleted and re-created from ever repeating an
//! old version. Because keys map to paths, one key cannot also be a "directory" of
//! others (`a` and `a/b`); the Anchises layout never does that. This module does
//! not retry: a conflict or an error goes back to the caller.

use std::collections::hash_map::RandomState;
use std::fs::{self, File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use crate::cas::{
    split_value_header, validate_prefix, value_header, CasError, CasFuture, CasKey, CasStore,
    Version, Versioned,
};

const SCRATCH: &str = ".cas";
/// Temp files older than this when the store opens were left by a crash.
const STALE_TEMP: Duration = Duration::from_secs(600);

/// A compare-and-swap store in a local directory.
#[derive(Debug, Clone)]
pub struct FsCasStore {
    root: PathBuf,
    fsync: bool,
}

impl FsCasStore {
    /// Opens (creating if needed) a store rooted at `root`, and removes temp files
    /// that a crashed writer left behind.
    pub fn open(root: impl Into<PathBuf>) -> io::Result<Self> {
        let root = root.into();
        fs::create_dir_all(root.join(SCRATCH).join("tmp"))?;
        fs::create_dir_all(root.join(SCRATCH).join("locks"))?;
        let now = SystemTime::now();
        for entry in fs::read_dir(root.join(SCRATCH).join("tmp"))? {
            let entry = entry?;
            let modified = entry.metadata().and_then(|m| m.modified());
            if modified.is_ok_and(|m| now.duration_since(m).unwrap_or_default() > STALE_TEMP) {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(FsCasStore { root, fsync: true })
    }

    /// Skips the two fsyncs of every write (the temp file before it is
    /// published, the directory after), which dominate its cost. Only for stores
    /// whose every user dies with the machine anyway (tests, a throwaway dev
    /// cluster): after a power loss the store may have lost acknowledged writes.
    pub fn without_fsync(mut self) -> Self {
        self.fsync = false;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn run<T: Send + 'static>(
        &self,
        key: &str,
        op: impl FnOnce(&Dir) -> Result<T, CasError> + Send + 'static,
    ) -> CasFuture<'static, T> {
        let root = self.root.clone();
        let fsync = self.fsync;
        let key = key.to_string();
        // Blocking file I/O and flock belong on the blocking pool. If the caller
        // drops the future, the operation still runs to completion, which keeps
        // every write whole.
        Box::pin(async move {
            tokio::task::spawn_blocking(move || op(&Dir { root, fsync }))
                .await
                .map_err(|e| CasError::Backend {
                    message: format!("filesystem task for {key} failed"),
                    source: Some(Box::new(e)),
                })?
        })
    }
}

/// What a blocking operation needs to know about the store.
struct Dir {
    root: PathBuf,
    fsync: bool,
}

impl CasStore for FsCasStore {
    fn get<'a>(&'a self, key: &'a CasKey) -> CasFuture<'a, Option<Versioned>> {
        let k = key.clone();
        self.run(key.as_str(), move |dir| read(&dir.root, &k))
    }

    fn put_if_absent<'a>(&'a self, key: &'a CasKey, value: Vec<u8>) -> CasFuture<'a, Version> {
        let k = key.clone();
        self.run(key.as_str(), move |dir| {
            let io = io_error(&k);
            let target = dir.root.join(k.as_str());
            fs::create_dir_all(target.parent().expect("keys are relative")).map_err(&io)?;
            let version = new_version(1);
            let temp = write_temp(dir, &version, &value).map_err(&io)?;
            let linked = fs::hard_link(&temp, &target);
            let _ = fs::remove_file(&temp);
            match linked {
                Ok(()) => {
                    sync_dir(dir, &target).map_err(&io)?;
                    Ok(version)
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(conflict(&k)),
                Err(e) => Err(io(e)),
            }
        })
    }

    fn put_if_match<'a>(
        &'a self,
        key: &'a CasKey,
        value: Vec<u8>,
        expected: &'a Version,
    ) -> CasFuture<'a, Version> {
        let (k, expected) = (key.clone(), expected.clone());
        self.run(key.as_str(), move |dir| {
            let io = io_error(&k);
            let _lock = lock(&dir.root, &k).map_err(&io)?;
            let current = read(&dir.root, &k)?.ok_or_else(|| conflict(&k))?;
            if current.version != expected {
                return Err(conflict(&k));
            }
            let version = new_version(generation(&current.version) + 1);
            let temp = write_temp(dir, &version, &value).map_err(&io)?;
            let target = dir.root.join(k.as_str());
            if let Err(e) = fs::rename(&temp, &target) {
                let _ = fs::remove_file(&temp);
                return Err(io(e));
            }
            sync_dir(dir, &target).map_err(&io)?;
            Ok(version)
        })
    }

    fn delete_if_match<'a>(&'a self, key: &'a CasKey, expected: &'a Version) -> CasFuture<'a, ()> {
        let (k, expected) = (key.clone(), expected.clone());
        self.run(key.as_str(), move |dir| {
            let io = io_error(&k);
            let _lock = lock(&dir.root, &k).map_err(&io)?;
            let current = read(&dir.root, &k)?.ok_or_else(|| conflict(&k))?;
            if current.version != expected {
                return Err(conflict(&k));
            }
            let target = dir.root.join(k.as_str());
            fs::remove_file(&target).map_err(&io)?;
            sync_dir(dir, &target).map_err(&io)
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> CasFuture<'a, Vec<CasKey>> {
        let prefix = prefix.to_string();
        self.run(&prefix.clone(), move |dir| {
            validate_prefix(&prefix)?;
            list(&dir.root, &prefix).map_err(io_error_str(&prefix))
        })
    }
}

fn conflict(key: &CasKey) -> CasError {
    CasError::Conflict {
        key: key.to_string(),
    }
}

fn io_error(key: &CasKey) -> impl Fn(io::Error) -> CasError + '_ {
    io_error_str(key.as_str())
}

fn io_error_str(key: &str) -> impl Fn(io::Error) -> CasError + '_ {
    move |source| CasError::Io {
        key: key.to_string(),
        source,
    }
}

fn read(root: &Path, key: &CasKey) -> Result<Option<Versioned>, CasError> {
    let mut bytes = Vec::new();
    match File::open(root.join(key.as_str())).and_then(|mut f| f.read_to_end(&mut bytes)) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(key)(e)),
    }
    let (version, value) = split_value_header(key, &bytes)?;
    Ok(Some(Versioned {
        value: value.to_vec(),
        version: Version::new(version),
    }))
}

/// Writes header and value to a fresh temp file and syncs it, so that a link or
/// rename never publishes a file whose data is still only in the page cache.
fn write_temp(dir: &Dir, version: &Version, value: &[u8]) -> io::Result<PathBuf> {
    let path = dir.root.join(SCRATCH).join("tmp").join(format!(
        "{:016x}-{}.tmp",
        random_u64(),
        std::process::id()
    ));
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)?;
    let written = (|| {
        file.write_all(value_header(version.as_str()).as_bytes())?;
        file.write_all(value)?;
        if dir.fsync {
            file.sync_data()?;
        }
        Ok(())
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&path);
        return Err(e);
    }
    Ok(path)
}

/// Makes a link, rename or unlink durable: they are changes to the directory.
fn sync_dir(dir: &Dir, target: &Path) -> io::Result<()> {
    if !dir.fsync {
        return Ok(());
    }
    File::open(target.parent().expect("keys are relative"))?.sync_all()
}

/// Takes the key's exclusive lock; it is released when the file is closed, also
/// when the process dies, so a crashed writer never wedges a key.
fn lock(root: &Path, key: &CasKey) -> io::Result<File> {
    let path = root.join(SCRATCH).join("locks").join(key.as_str());
    fs::create_dir_all(path.parent().expect("keys are relative"))?;
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)?;
    loop {
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive) {
            Ok(()) => return Ok(file),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

fn list(root: &Path, prefix: &str) -> io::Result<Vec<CasKey>> {
    // Only the directory of the prefix's complete segments can hold matches.
    let base = match prefix.rsplit_once('/') {
        Some((dir, _)) => dir.to_string(),
        None => String::new(),
    };
    let mut keys = Vec::new();
    let mut pending = vec![base];
    while let Some(dir) = pending.pop() {
        let entries = match fs::read_dir(root.join(&dir)) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) if e.kind() == io::ErrorKind::NotADirectory => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let key = if dir.is_empty() {
                name
            } else {
                format!("{dir}/{name}")
            };
            // A directory is worth entering if it can still lead to the prefix.
            if entry.file_type()?.is_dir() {
                if key.starts_with(prefix) || prefix.starts_with(&format!("{key}/")) {
                    pending.push(key);
                }
            } else if key.starts_with(prefix) {
                if let Ok(key) = CasKey::new(key) {
                    keys.push(key);
                }
            }
        }
    }
    keys.sort();
    Ok(keys)
}

fn generation(version: &Version) -> u64 {
    version
        .as_str()
        .split_once('.')
        .and_then(|(generation, _)| generation.parse().ok())
        .unwrap_or(0)
}

fn new_version(generation: u64) -> Version {
    Version::new(format!("{generation}.{:016x}", random_u64()))
}

/// 64 random bits without a dependency: std's `RandomState` is seeded from the
/// OS per thread and advanced per instance, and the counter, pid and clock make
/// two processes' values differ even if seeds ever repeated.
fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u32(std::process::id());
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    hasher.write_u128(nanos);
    hasher.finish()
}
