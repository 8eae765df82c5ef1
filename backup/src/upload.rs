//! One file into the store: read once, hashed (BLAKE3) while it is read,
//! zstd-compressed on the way when asked, throttled, and streamed to
//! [`ObjectStore::put_reader`] (a multipart upload on S3).
//!
//! Reading, hashing and compressing run on a blocking thread that hands
//! 256 KiB chunks to the upload through a channel of four: memory per upload is the
//! channel plus what the store holds in flight, whatever the file's size. A
//! file that changes size or vanishes while it is read fails the upload; the
//! object the store may have received is never named by a manifest.

use std::collections::HashMap;
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_speed_limit::Limiter;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::io::{StreamReader, SyncIoBridge};

use crate::error::BackupError;
use crate::manifest::{Compression, FileEntry};
use crate::store::{LocalPut, ObjectKey, ObjectStore, StoreError};

/// Bytes handed from the reader thread to the upload at a time.
const CHUNK: usize = 256 * 1024;

/// The buffer of an object written to a filesystem store: each full one is
/// one write to the disk.
const WRITE_BUFFER: usize = 1024 * 1024;

/// Each read of a file going to S3, whose pace the network sets: the
/// largest reads ([`crate::direct::MAX_BUFFER`]) are for disk-to-disk work.
const STREAM_READ: usize = 1024 * 1024;
/// Chunks buffered between the reader thread and the upload.
const CHANNEL: usize = 4;

/// A bytes/s limit shared by every upload of a job (and of the process, when
/// the caller shares it). `Throttle::unlimited()` costs nothing.
#[derive(Clone)]
pub struct Throttle(Option<Limiter>);

impl Throttle {
    pub fn new(bytes_per_sec: Option<u64>) -> Self {
        Throttle(
            bytes_per_sec
                .filter(|&b| b > 0)
                .map(|b| <Limiter>::new(b as f64)),
        )
    }

    pub fn unlimited() -> Self {
        Throttle(None)
    }

    pub fn is_unlimited(&self) -> bool {
        self.0.is_none()
    }

    pub async fn consume(&self, bytes: usize) {
        if let Some(limiter) = &self.0 {
            limiter.consume(bytes).await;
        }
    }

    /// [`Throttle::consume`] on a blocking thread (the limiter's timer needs
    /// no runtime), ended early by `stop`: returns false if it was. A slow
    /// limit can hold a chunk for long, and a stopped transfer must not
    /// wait for it.
    pub fn consume_blocking(
        &self,
        bytes: usize,
        stop: Option<&tokio_util::sync::CancellationToken>,
    ) -> bool {
        let Some(limiter) = &self.0 else {
            return true;
        };
        futures::executor::block_on(async {
            match stop {
                Some(stop) => tokio::select! {
                    () = limiter.consume(bytes) => true,
                    () = stop.cancelled() => false,
                },
                None => {
                    limiter.consume(bytes).await;
                    true
                }
            }
        })
    }
}

impl std::fmt::Debug for Throttle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(l) => write!(f, "Throttle({} B/s)", l.speed_limit()),
            None => f.write_str("Throttle(unlimited)"),
        }
    }
}

/// What an upload stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    /// BLAKE3 of the file's bytes, hex.
    pub hash: String,
    pub size: u64,
    pub stored_size: u64,
}

/// Uploads `path` to `key`. `progress` (if any) grows by the file bytes read.
pub async fn upload_file(
    store: &ObjectStore,
    key: &ObjectKey,
    path: &Path,
    compression: Compression,
    zstd_level: i32,
    throttle: &Throttle,
    progress: Option<Arc<AtomicU64>>,
) -> Result<Uploaded, BackupError> {
    if throttle.is_unlimited() {
        if let Some(local) = store.local_put(key) {
            return upload_local(local, path, compression, zstd_level, progress).await;
        }
    }
    let size = std::fs::metadata(path)
        .map_err(|source| BackupError::File {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    if compression == Compression::None && store.is_s3() {
        return if store.streams_put(size) {
            upload_streamed(store, key, path, size, throttle, progress).await
        } else {
            upload_ranges(store, key, path, throttle, progress).await
        };
    }
    // An upper bound of what is stored (zstd's worst case adds well under 1 %),
    // so that the store can size multipart parts for a huge file.
    let size_hint = Some(size + size / 100 + CHUNK as u64);
    let (reader, chunks) = spawn_reader(path, compression, zstd_level, throttle, progress);
    let mut body = StreamReader::new(chunks);
    let put = store.put_reader(key, &mut body, size_hint).await;
    drop(body);
    let read = reader
        .await
        .map_err(|e| BackupError::Internal(format!("reader thread: {e}")))?;
    finish_upload(path, put.map(drop), read)
}

/// [`upload_file`] of a raw file that the store takes as one streaming
/// request: each attempt of the request reads the file again (hashing,
/// counting progress, throttled) into the request's body.
async fn upload_streamed(
    store: &ObjectStore,
    key: &ObjectKey,
    path: &Path,
    size: u64,
    throttle: &Throttle,
    progress: Option<Arc<AtomicU64>>,
) -> Result<Uploaded, BackupError> {
    let reader: Mutex<Option<JoinHandle<io::Result<ReadOutcome>>>> = Mutex::new(None);
    let reader = &reader;
    let put = store
        .put_stream(key, size, || {
            let progress = progress.clone();
            async move {
                // A failed attempt's reader stops once its body is dropped;
                // waiting for it lets the progress count start again from zero.
                let previous = reader.lock().expect("reader lock").take();
                if let Some(previous) = previous {
                    let _ = previous.await;
                }
                if let Some(p) = &progress {
                    p.store(0, Ordering::Relaxed);
                }
                let (handle, chunks) = spawn_reader(path, Compression::None, 0, throttle, progress);
                *reader.lock().expect("reader lock") = Some(handle);
                chunks
            }
        })
        .await;
    let handle = reader.lock().expect("reader lock").take();
    let read = match handle {
        Some(handle) => handle
            .await
            .map_err(|e| BackupError::Internal(format!("reader thread: {e}")))?,
        // No attempt got as far as reading the file (each failed before it
        // was sent, or the store's work was cancelled).
        None => return Err(put.err().map(Into::into).unwrap_or(BackupError::Cancelled)),
    };
    finish_upload(path, put, read)
}

/// [`upload_file`] of a raw file that S3 takes in parts: the parts stream
/// their ranges of the file, opened once, while a blocking thread hashes it
/// from start to end. Several parts go up at once, and no part is held in
/// memory. Progress counts what the parts sent; a part sent again counts
/// once.
async fn upload_ranges(
    store: &ObjectStore,
    key: &ObjectKey,
    path: &Path,
    throttle: &Throttle,
    progress: Option<Arc<AtomicU64>>,
) -> Result<Uploaded, BackupError> {
    let file_error = |source| BackupError::File {
        path: path.to_path_buf(),
        source,
    };
    let file = Arc::new(std::fs::File::open(path).map_err(file_error)?);
    let size = file.metadata().map_err(file_error)?.len();
    // The hash thread stops early if the upload fails or is dropped.
    let stop = StopOnDrop::default();
    let hashing = {
        // A handle on the same open file: the parts read at offsets and never
        // move its cursor, which the hash thread alone reads from.
        let hashed = io::BufReader::with_capacity(CHUNK, file.try_clone().map_err(file_error)?);
        let (source, stop) = (path.to_path_buf(), stop.0.clone());
        tokio::task::spawn_blocking(move || {
            read_from(
                &source,
                (Box::new(hashed), size),
                Compression::None,
                0,
                StopSink(stop),
                None,
            )
        })
    };
    // Bytes each part's latest attempt counted, by offset.
    let counted: Arc<Mutex<HashMap<u64, Arc<AtomicU64>>>> = Arc::default();
    let throttle = throttle.clone();
    let put = store
        .put_ranges(key, size, move |offset, len| {
            let attempt = Arc::new(AtomicU64::new(0));
            let earlier = counted
                .lock()
                .expect("counted lock")
                .insert(offset, attempt.clone());
            let progress = progress.clone();
            if let (Some(p), Some(earlier)) = (&progress, earlier) {
                p.fetch_sub(earlier.load(Ordering::Relaxed), Ordering::Relaxed);
            }
            let throttle = throttle.clone();
            let chunks = crate::store::file_range(file.clone(), offset, len).then(move |chunk| {
                let (throttle, attempt, progress) =
                    (throttle.clone(), attempt.clone(), progress.clone());
                async move {
                    if let Ok(chunk) = &chunk {
                        throttle.consume(chunk.len()).await;
                        attempt.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                        if let Some(p) = &progress {
                            p.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                        }
                    }
                    chunk
                }
            });
            std::future::ready(chunks)
        })
        .await;
    if put.is_err() {
        stop.0.store(true, Ordering::Relaxed);
    }
    let hashed = hashing
        .await
        .map_err(|e| BackupError::Internal(format!("hash thread: {e}")))?;
    // As a streamed upload's reader: a file that vanished or changed
    // meanwhile fails the upload, and says so (also when the upload failed
    // first, reading past the file's new end).
    let read = match std::fs::metadata(path) {
        Err(e) => Err(e),
        Ok(now) if now.len() != size => Err(io::Error::other(format!(
            "changed while being read: {size} bytes at open, {} now",
            now.len()
        ))),
        Ok(_) => hashed.map(|(hash, total, _)| (hash, total, total)),
    };
    finish_upload(path, put, read)
}

/// A flag set when it is dropped.
#[derive(Default)]
struct StopOnDrop(Arc<std::sync::atomic::AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A sink for bytes only hashed, that fails once its flag is set (the
/// upload they are hashed for stopped).
struct StopSink(Arc<std::sync::atomic::AtomicBool>);

impl Write for StopSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.0.load(Ordering::Relaxed) {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the upload stopped",
            ));
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Whether [`upload_file`] streams a file stored with `compression` from
/// disk, holding no part in memory: a raw file (one streamed request, or
/// parts streaming their ranges), and anything on the filesystem. A
/// compressed one goes to S3 from memory, part by part.
pub fn streamed(store: &ObjectStore, compression: Compression) -> bool {
    compression == Compression::None || !store.is_s3()
}

/// Starts the thread that reads `path` (see [`read_file`]); returns it and
/// the stream of the chunks it sends.
fn spawn_reader(
    path: &Path,
    compression: Compression,
    zstd_level: i32,
    throttle: &Throttle,
    progress: Option<Arc<AtomicU64>>,
) -> (
    JoinHandle<io::Result<ReadOutcome>>,
    impl futures::Stream<Item = io::Result<Bytes>> + Send + Sync + Unpin,
) {
    let (tx, mut rx) = mpsc::channel::<io::Result<Bytes>>(CHANNEL);
    let (source, throttle) = (path.to_path_buf(), throttle.clone());
    let reader = tokio::task::spawn_blocking(move || {
        read_file(
            &source,
            compression,
            zstd_level,
            tx,
            &throttle,
            progress.as_deref(),
        )
    });
    (reader, futures::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}

/// What the reading thread made of a file: its hash, its size and the bytes
/// it handed on (stored size).
type ReadOutcome = (blake3::Hash, u64, u64);

/// The outcome of an upload from the store's answer and the reading thread's.
fn finish_upload(
    path: &Path,
    put: Result<(), StoreError>,
    read: io::Result<ReadOutcome>,
) -> Result<Uploaded, BackupError> {
    // The reader's own error (a vanished or changed file) explains a failed
    // upload better than the store's "reading the source failed"; a reader
    // stopped because the upload failed ("broken pipe") does not.
    match (put, read) {
        (Ok(()), Ok((hash, size, stored_size))) => Ok(Uploaded {
            hash: hash.to_hex().to_string(),
            size,
            stored_size,
        }),
        (Err(e), Ok(_)) => Err(e.into()),
        (Err(e), Err(source)) if source.kind() == io::ErrorKind::BrokenPipe => Err(e.into()),
        (_, Err(source)) => Err(BackupError::File {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// [`upload_file`] into a local store without a rate limit: the reader thread
/// writes the object's temp file itself, and commits it.
async fn upload_local(
    local: LocalPut,
    path: &Path,
    compression: Compression,
    zstd_level: i32,
    progress: Option<Arc<AtomicU64>>,
) -> Result<Uploaded, BackupError> {
    let source = path.to_path_buf();
    let key = local.key().to_string();
    let written = tokio::task::spawn_blocking(move || {
        let file = local.create(WRITE_BUFFER).map_err(|e| (true, e))?;
        let out = CountingWriter {
            inner: file,
            count: 0,
        };
        let read = read_into(
            &source,
            crate::direct::MAX_BUFFER,
            compression,
            zstd_level,
            out,
            progress.as_deref(),
        );
        let committed = read.map_err(|e| (false, e)).and_then(|(hash, size, out)| {
            let stored = out.count;
            let file = out.inner.finish().map_err(|e| (true, e))?;
            local.commit(file).map_err(|e| (true, e))?;
            Ok((hash, size, stored))
        });
        if committed.is_err() {
            local.abandon();
        }
        committed
    })
    .await
    .map_err(|e| BackupError::Internal(format!("reader thread: {e}")))?;
    match written {
        Ok((hash, size, stored_size)) => Ok(Uploaded {
            hash: hash.to_hex().to_string(),
            size,
            stored_size,
        }),
        // The store's own side (its temp file, the rename) failed.
        Err((true, e)) => Err(StoreError::io("put", &key, e).into()),
        Err((false, source)) => Err(BackupError::File {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Counts the bytes written through it.
struct CountingWriter<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(data)?;
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// BLAKE3 of a file, hex, and its size (for files whose name and size match a
/// stored object: hashing decides whether to skip).
pub async fn hash_file(path: &Path) -> Result<(String, u64), BackupError> {
    let source = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let (mut reader, _) = crate::direct::open_once(&source, crate::direct::MAX_BUFFER)?;
        let mut hasher = blake3::Hasher::new();
        let size = crate::direct::copy_buffered(&mut reader, &mut hasher)?;
        Ok::<_, io::Error>((hasher.finalize().to_hex().to_string(), size))
    })
    .await
    .map_err(|e| BackupError::Internal(format!("hash thread: {e}")))?
    .map_err(|source| BackupError::File {
        path: path.to_path_buf(),
        source,
    })
}

/// The blocking half: read, hash, maybe compress, send chunks (throttled).
fn read_file(
    path: &Path,
    compression: Compression,
    zstd_level: i32,
    tx: mpsc::Sender<io::Result<Bytes>>,
    throttle: &Throttle,
    progress: Option<&AtomicU64>,
) -> io::Result<ReadOutcome> {
    let sink = ChunkSink {
        tx: &tx,
        throttle,
        buffer: BytesMut::new(),
        sent: 0,
    };
    let result = read_into(path, STREAM_READ, compression, zstd_level, sink, progress);
    if let Err(e) = &result {
        // Fail the upload too, so that the store never completes the object.
        let _ = tx.blocking_send(Err(io::Error::new(e.kind(), e.to_string())));
    }
    result.map(|(hash, size, sink)| (hash, size, sink.sent))
}

/// Reads `path`, `read_size` bytes at a time, hashing it, into `sink`
/// (through zstd or not); gives the sink back once everything is written.
fn read_into<W: Write>(
    path: &Path,
    read_size: usize,
    compression: Compression,
    zstd_level: i32,
    sink: W,
    progress: Option<&AtomicU64>,
) -> io::Result<(blake3::Hash, u64, W)> {
    // Around the page cache where the filesystem can: a backup reads each
    // file once, and should not push the node's hot pages out.
    let opened = crate::direct::open_once(path, read_size)?;
    read_from(path, opened, compression, zstd_level, sink, progress)
}

/// [`read_into`] from a reader of the file at `path` (from its start), with
/// the size the file had when it was opened.
fn read_from<W: Write>(
    path: &Path,
    (mut reader, expected): (Box<dyn io::BufRead + Send>, u64),
    compression: Compression,
    zstd_level: i32,
    sink: W,
    progress: Option<&AtomicU64>,
) -> io::Result<(blake3::Hash, u64, W)> {
    let mut hasher = blake3::Hasher::new();
    let mut out = match compression {
        Compression::Zstd => {
            let mut encoder = zstd::stream::Encoder::new(sink, zstd_level)?;
            // With the size known, zstd sizes its window and tables to the
            // file: a small component costs kilobytes, not megabytes.
            encoder.set_pledged_src_size(Some(expected))?;
            encoder.include_contentsize(true)?;
            Out::Zstd(encoder)
        }
        Compression::None => Out::Raw(sink),
    };
    let mut total = 0u64;
    loop {
        let chunk = match reader.fill_buf() {
            Ok([]) => break,
            Ok(chunk) => chunk,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let n = chunk.len();
        hasher.update(chunk);
        total += n as u64;
        if total > expected {
            break;
        }
        if let Some(p) = progress {
            p.fetch_add(n as u64, Ordering::Relaxed);
        }
        match &mut out {
            Out::Zstd(encoder) => encoder.write_all(chunk)?,
            Out::Raw(sink) => sink.write_all(chunk)?,
        }
        reader.consume(n);
    }
    // Checked before zstd ends the frame (it would refuse a size other than
    // the pledged one with a less helpful message).
    if total != expected {
        return Err(io::Error::other(if total > expected {
            format!("changed while being read: grew past the {expected} bytes it had at open")
        } else {
            format!("changed while being read: {expected} bytes at open, {total} read")
        }));
    }
    let mut sink = match out {
        Out::Zstd(encoder) => encoder.finish()?,
        Out::Raw(sink) => sink,
    };
    sink.flush()?;
    if std::fs::metadata(path)?.len() != total {
        return Err(io::Error::other("changed while being read"));
    }
    Ok((hasher.finalize(), total, sink))
}

/// Where read bytes go: straight to the sink, or through zstd.
enum Out<W: Write> {
    Raw(W),
    Zstd(zstd::stream::Encoder<'static, W>),
}

/// Collects (compressed) output into chunks of `CHUNK` bytes for the channel,
/// each sent once the throttle allows it.
struct ChunkSink<'a> {
    tx: &'a mpsc::Sender<io::Result<Bytes>>,
    throttle: &'a Throttle,
    buffer: BytesMut,
    sent: u64,
}

impl ChunkSink<'_> {
    fn send(&mut self, chunk: Bytes) -> io::Result<()> {
        if chunk.is_empty() {
            return Ok(());
        }
        self.throttle.consume_blocking(chunk.len(), None);
        self.sent += chunk.len() as u64;
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload stopped"))
    }
}

impl Write for ChunkSink<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        // At most a chunk per message, however much the reader holds.
        let data = &data[..data.len().min(CHUNK - self.buffer.len())];
        self.buffer.extend_from_slice(data);
        if self.buffer.len() >= CHUNK {
            let chunk = self.buffer.split().freeze();
            self.send(chunk)?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.buffer.is_empty() {
            let chunk = self.buffer.split().freeze();
            self.send(chunk)?;
        }
        Ok(())
    }
}

/// Downloads an object and checks it against its file entry's size and hash,
/// streaming (deep verification): nothing is written to disk and memory stays
/// at a few chunks whatever the object's size.
pub async fn check_object(
    store: &ObjectStore,
    key: &ObjectKey,
    entry: &FileEntry,
) -> Result<(), String> {
    fetch_object(store, key, entry, None, None, &Throttle::unlimited())
        .await
        .map(drop)
        .map_err(|e| match e {
            BackupError::Corrupt(m) => m,
            other => other.to_string(),
        })
}

/// Whether Cassandra never writes into an existing file of this name, so that
/// the live file may share its inode with a store object: `Data.db` is
/// written once, when the SSTable is, and only ever read or unlinked after
/// (Cassandra's own snapshots and incremental backups are hard links of it).
/// Other components are not linked: `TOC.txt` is appended to, and a summary
/// or a filter can be saved again in place.
fn never_rewritten(name: &str) -> bool {
    name.ends_with("-Data.db")
}

/// Whether [`fetch_object`] links a local store's object of this encoding
/// for a file of this name (when the store is on the same filesystem): a raw
/// object of a file Cassandra [`never_rewritten`].
pub fn may_link(compression: Compression, name: &str) -> bool {
    compression == Compression::None && never_rewritten(name)
}

/// Downloads an object, decompresses it, checks its size and hash, and (with
/// `dest`) writes it there: through a temp file beside `dest`, renamed only
/// once it checked out, so `dest` is never half written or wrong while the
/// machine runs. The file is not synced: the caller syncs its files together
/// ([`stage`](crate::restore::stage) syncs the filesystem once at the end).
/// A mismatch is `Corrupt`; a failed download is the store's error. The
/// throttle paces the object's bytes as they are checked, a chunk at a
/// time (not the whole object before it starts).
///
/// A raw object of a local store on `dest`'s filesystem whose name Cassandra
/// [`never_rewritten`] is hard-linked instead of copied: only read, to check
/// its hash. Returns whether it was.
pub async fn fetch_object(
    store: &ObjectStore,
    key: &ObjectKey,
    entry: &FileEntry,
    dest: Option<&Path>,
    progress: Option<Arc<AtomicU64>>,
    throttle: &Throttle,
) -> Result<bool, BackupError> {
    let (compression, size) = (entry.compression, entry.size);
    let local = store.local_file(key);
    // A local store's file is read straight from the hashing thread (around
    // the page cache where its filesystem can); any other object streams in
    // through a pipe from the download task.
    let (reader, download): (Box<dyn io::BufRead + Send>, _) = match &local {
        Some(path) => {
            let (reader, _) = crate::direct::open_once(path, crate::direct::MAX_BUFFER)
                .map_err(|e| StoreError::io("get", key.as_str(), e))?;
            (reader, None)
        }
        None => {
            let (mut write_end, read_end) = tokio::io::duplex(CHUNK);
            let store = store.clone();
            let key = key.clone();
            let task = tokio::spawn(async move { store.get_to_writer(&key, &mut write_end).await });
            let reader = io::BufReader::with_capacity(CHUNK, SyncIoBridge::new(read_end));
            (Box::new(reader), Some(task))
        }
    };
    let temp = dest.map(|d| {
        let name = d
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        d.with_file_name(format!(".{name}.{}.part", uuid::Uuid::new_v4().simple()))
    });
    // Another filesystem (EXDEV) or one without hard links: copied instead.
    let linked = match (&local, &temp, dest.and_then(Path::file_name)) {
        (Some(object), Some(t), Some(name)) if may_link(compression, &name.to_string_lossy()) => {
            std::fs::hard_link(object, t).is_ok()
        }
        _ => false,
    };
    let expected = entry.hash.clone();
    // A linked object is only hashed: its data is the store's, synced when
    // the store wrote it.
    let temp_for_thread = temp.clone().filter(|_| !linked);
    let throttle = throttle.clone();
    let stop = tokio_util::sync::CancellationToken::new();
    let _stop_on_drop = stop.clone().drop_guard();
    let checked = tokio::task::spawn_blocking(move || -> Result<(), BackupError> {
        let mut reader = reader;
        let file = match &temp_for_thread {
            Some(t) => Some(io::BufWriter::with_capacity(
                CHUNK,
                std::fs::File::create(t).map_err(|source| BackupError::File {
                    path: t.clone(),
                    source,
                })?,
            )),
            None => None,
        };
        let mut out = HashingWriter {
            hasher: blake3::Hasher::new(),
            file,
            progress,
            throttle,
            stop,
        };
        let read = match compression {
            // The hash and the file get a whole chunk at a time.
            Compression::None => crate::direct::copy_buffered(&mut reader, &mut out),
            Compression::Zstd => zstd::stream::Decoder::with_buffer(&mut reader)
                .and_then(|mut decoder| io::copy(&mut decoder, &mut out)),
        };
        // Drain what is left, so that a bad object never shows up as a broken
        // download.
        let _ = io::copy(&mut reader, &mut io::sink());
        let n = read.map_err(|e| BackupError::Corrupt(format!("cannot read it back: {e}")))?;
        if n != size {
            return Err(BackupError::Corrupt(format!(
                "holds {n} bytes, the manifest says {size}"
            )));
        }
        let actual = out.hasher.finalize().to_hex().to_string();
        if actual != expected {
            return Err(BackupError::Corrupt(format!(
                "content hash {actual} does not match the manifest's {expected}"
            )));
        }
        if let (Some(file), Some(t)) = (out.file, &temp_for_thread) {
            file.into_inner().map_err(|e| BackupError::File {
                path: t.clone(),
                source: e.into_error(),
            })?;
        }
        Ok(())
    });
    let downloaded = match download {
        Some(task) => task
            .await
            .map_err(|e| BackupError::Internal(format!("download task: {e}")))?
            .map(|_| ()),
        None => Ok(()),
    };
    let checked = checked
        .await
        .map_err(|e| BackupError::Internal(format!("hash thread: {e}")))?;
    // A failed download explains a short read better than the check does.
    let result = downloaded.map_err(BackupError::from).and(checked);
    match (&result, &temp, dest) {
        (Ok(()), Some(t), Some(d)) => {
            std::fs::rename(t, d).map_err(|source| BackupError::File {
                path: d.to_path_buf(),
                source,
            })?;
        }
        (Err(_), Some(t), _) => {
            let _ = std::fs::remove_file(t);
        }
        _ => {}
    }
    result.map(|()| linked)
}

/// Hashes what passes through, counts it, and writes it to a file if any.
struct HashingWriter {
    hasher: blake3::Hasher,
    file: Option<io::BufWriter<std::fs::File>>,
    progress: Option<Arc<AtomicU64>>,
    throttle: Throttle,
    /// Cancelled once the fetch is dropped: a throttled wait ends then.
    stop: tokio_util::sync::CancellationToken,
}

impl Write for HashingWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = match &mut self.file {
            Some(f) => f.write(data)?,
            None => data.len(),
        };
        self.hasher.update(&data[..n]);
        if let Some(p) = &self.progress {
            p.fetch_add(n as u64, Ordering::Relaxed);
        }
        if !self.throttle.consume_blocking(n, Some(&self.stop)) {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the fetch stopped",
            ));
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.file {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}
