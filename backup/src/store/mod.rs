//! The object store: one API over two backends, the local filesystem and S3
//! (any S3-compatible endpoint), with keys validated and every request retried
//! in one place.
//!
//! [`ObjectStore`] dispatches over the backends with an enum and wraps each
//! request in [`Attempts`]: fault injection (tests only, `faults.rs`) and then
//! the retry layer (`retry.rs`). Streaming uploads and downloads retry request
//! by request, never re-reading a caller's reader or re-writing a caller's
//! writer. The compare-and-swap store for coordination lives in `cas.rs` (S3)
//! and in `anchises_topology::FsCasStore` (filesystem). This module moves bytes;
//! it knows nothing of Cassandra, manifests or compression.

mod cas;
mod error;
mod faults;
mod fs;
mod key;
mod multipart;
mod retry;
mod s3;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anchises_topology::{CasStore, FsCasStore};
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_util::io::StreamReader;
use tokio_util::sync::CancellationToken;

pub use cas::S3CasStore;
pub use error::{BoxError, StoreError};
pub use faults::{FaultPoint, Faults};
pub use key::{check_prefix, ObjectKey};
pub use retry::{retry, RetryPolicy};
pub use s3::{S3Config, S3Credentials, MIN_PART_SIZE};

use fs::FsBackend;
pub use fs::LocalPut;
use s3::S3Backend;

/// Which backend, and where.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    /// Objects are files under `root`.
    Filesystem {
        root: PathBuf,
    },
    S3(S3Config),
}

/// What `head` tells about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub size: u64,
    /// S3's etag; on the filesystem, modification time and size.
    pub etag: String,
}

/// One entry of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedObject {
    pub key: ObjectKey,
    pub size: u64,
}

#[derive(Debug, Clone)]
enum Backend {
    Fs(FsBackend),
    S3(S3Backend),
}

/// How each request is attempted: faults (tests), then retries, under a
/// cancellation token.
#[derive(Debug, Clone, Default)]
pub(crate) struct Attempts {
    policy: RetryPolicy,
    cancel: CancellationToken,
    faults: Option<Arc<Faults>>,
}

impl Attempts {
    /// One attempt, through the fault injector if there is one.
    pub(crate) async fn once<T>(
        &self,
        op: &'static str,
        key: &str,
        request: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        if let Some(faults) = &self.faults {
            match faults.decide(op) {
                Some(FaultPoint::BeforeRequest) => return Err(faults.error(op, key)),
                Some(FaultPoint::AfterRequest) => {
                    request.await?;
                    return Err(faults.error(op, key));
                }
                None => {}
            }
        }
        request.await
    }

    /// Attempts until success, a permanent error, the end of the retry budget
    /// or cancellation.
    pub(crate) async fn run<T, F, Fut>(
        &self,
        op: &'static str,
        key: &str,
        mut request: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        retry(&self.policy, &self.cancel, op, key, || {
            self.once(op, key, request())
        })
        .await
    }
}

/// The object store. Cloning is cheap and clones share the S3 connection pool.
#[derive(Debug, Clone)]
pub struct ObjectStore {
    backend: Backend,
    attempts: Attempts,
}

impl ObjectStore {
    pub async fn open(config: &StoreConfig) -> Result<Self, StoreError> {
        match config {
            StoreConfig::Filesystem { root } => ObjectStore::filesystem(root),
            StoreConfig::S3(s3) => ObjectStore::s3(s3).await,
        }
    }

    /// Objects as files under `root` (created if missing).
    pub fn filesystem(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        Ok(ObjectStore {
            backend: Backend::Fs(FsBackend::open(root)?),
            attempts: Attempts::default(),
        })
    }

    /// Objects in an S3 bucket. Does not contact S3: a wrong bucket or endpoint
    /// shows up on the first request.
    pub async fn s3(config: &S3Config) -> Result<Self, StoreError> {
        Ok(ObjectStore {
            backend: Backend::S3(S3Backend::connect(config).await?),
            attempts: Attempts::default(),
        })
    }

    pub fn with_retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.attempts.policy = policy;
        self
    }

    /// Requests and the waits between their retries stop with
    /// [`StoreError::Cancelled`] once `token` fires.
    pub fn with_cancellation(mut self, token: CancellationToken) -> Self {
        self.attempts.cancel = token;
        self
    }

    /// Injects faults under the retry layer (tests of retry paths).
    pub fn with_faults(mut self, faults: Arc<Faults>) -> Self {
        self.attempts.faults = Some(faults);
        self
    }

    pub fn is_s3(&self) -> bool {
        matches!(self.backend, Backend::S3(_))
    }

    pub async fn put(&self, key: &ObjectKey, body: Bytes) -> Result<(), StoreError> {
        self.attempts
            .run("put", key.as_str(), || async {
                match &self.backend {
                    Backend::Fs(fs) => fs.put(key, &body).await,
                    Backend::S3(s3) => s3.put(key, body.clone()).await,
                }
            })
            .await
    }

    /// Uploads a local file (multipart on S3 when larger than a part); returns
    /// its size.
    pub async fn put_file(&self, key: &ObjectKey, path: &Path) -> Result<u64, StoreError> {
        match &self.backend {
            Backend::Fs(fs) => {
                self.attempts
                    .run("put", key.as_str(), || fs.put_file(key, path))
                    .await
            }
            Backend::S3(_) => {
                let open_error = |e: std::io::Error| {
                    StoreError::permanent(
                        "put",
                        key.as_str(),
                        format!("cannot open {}: {e}", path.display()),
                    )
                };
                let file = std::fs::File::open(path).map_err(open_error)?;
                let size = file.metadata().map_err(open_error)?.len();
                let file = Arc::new(file);
                self.put_ranges(key, size, move |offset, len| {
                    std::future::ready(file_range(file.clone(), offset, len))
                })
                .await?;
                Ok(size)
            }
        }
    }

    /// Uploads an object of exactly `size` bytes from a source that can be
    /// read again: `body(offset, len)` streams that range of it. S3 takes it
    /// as one streamed PutObject up to `multipart_threshold` (see
    /// [`ObjectStore::streams_put`]), else in parts that each stream their
    /// range, several at a time; each attempt calls `body` again. Nothing is
    /// buffered but the streams' chunks. The filesystem takes `body(0, size)`.
    pub async fn put_ranges<F, Fut, S>(
        &self,
        key: &ObjectKey,
        size: u64,
        body: F,
    ) -> Result<(), StoreError>
    where
        F: Fn(u64, u64) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = S> + Send,
        S: futures::Stream<Item = std::io::Result<Bytes>> + Send + Sync + 'static,
    {
        match &self.backend {
            Backend::S3(s3) if !self.streams_put(size) => {
                let part_size = multipart::part_size_for(s3.part_size, Some(size));
                multipart::upload_ranges(s3, &self.attempts, key, size, part_size, body).await
            }
            _ => self.put_stream(key, size, || body(0, size)).await,
        }
    }

    /// Whether [`ObjectStore::put_stream`] sends an object of `size` bytes as
    /// one request that streams it (S3, up to `multipart_threshold`), so that
    /// nothing of it is buffered.
    pub fn streams_put(&self, size: u64) -> bool {
        match &self.backend {
            Backend::Fs(_) => false,
            Backend::S3(s3) => size <= s3.multipart_threshold,
        }
    }

    /// Uploads an object of exactly `size` bytes. Each attempt calls `body` for
    /// a fresh stream of the bytes (after the previous attempt's stream was
    /// dropped); the stream must yield `size` bytes or end with an error. On S3
    /// it is one streaming PutObject (see [`ObjectStore::streams_put`]); on the
    /// filesystem the temp file is written from it.
    pub async fn put_stream<F, Fut, S>(
        &self,
        key: &ObjectKey,
        size: u64,
        mut body: F,
    ) -> Result<(), StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = S>,
        S: futures::Stream<Item = std::io::Result<Bytes>> + Send + Sync + 'static,
    {
        self.attempts
            .run("put", key.as_str(), || {
                let stream = body();
                async move {
                    let stream = stream.await;
                    match &self.backend {
                        Backend::Fs(fs) => {
                            let mut reader = StreamReader::new(Box::pin(stream));
                            fs.put_reader(key, &mut reader, Some(size)).await.map(drop)
                        }
                        Backend::S3(s3) => s3.put_stream(key, size, stream).await,
                    }
                }
            })
            .await
    }

    /// Uploads everything `reader` yields; returns the byte count. The reader
    /// is read once: S3 parts are retried from memory, and a filesystem write
    /// that fails is not retried. `size_hint`, an upper bound of the bytes to
    /// come, lets S3 parts grow so that a huge object stays within 10,000.
    pub async fn put_reader<R>(
        &self,
        key: &ObjectKey,
        reader: &mut R,
        size_hint: Option<u64>,
    ) -> Result<u64, StoreError>
    where
        R: AsyncRead + Unpin + Send + ?Sized,
    {
        match &self.backend {
            Backend::Fs(fs) => {
                self.attempts
                    .once("put", key.as_str(), fs.put_reader(key, reader, None))
                    .await
            }
            Backend::S3(s3) => {
                let part_size = multipart::part_size_for(s3.part_size, size_hint);
                multipart::upload(s3, &self.attempts, key, reader, part_size).await
            }
        }
    }

    pub async fn get(&self, key: &ObjectKey) -> Result<Bytes, StoreError> {
        self.attempts
            .run("get", key.as_str(), || async {
                match &self.backend {
                    Backend::Fs(fs) => fs.get(key).await,
                    Backend::S3(s3) => s3.get(key).await.map(|(bytes, _)| bytes),
                }
            })
            .await
    }

    /// The file that holds `key` in a local (filesystem) store, for readers on
    /// the same machine to open directly; `None` for other stores, and when
    /// faults are injected (tests), so that those go through the requests.
    pub fn local_file(&self, key: &ObjectKey) -> Option<PathBuf> {
        match &self.backend {
            Backend::Fs(fs) if self.attempts.faults.is_none() => Some(fs.path(key)),
            _ => None,
        }
    }

    /// A put that a blocking writer on this machine makes itself, for a
    /// local store (and not when faults are injected); `None` otherwise.
    pub fn local_put(&self, key: &ObjectKey) -> Option<LocalPut> {
        match &self.backend {
            Backend::Fs(fs) if self.attempts.faults.is_none() => Some(fs.local_put(key)),
            _ => None,
        }
    }

    /// Streams an object into `writer`; returns the byte count. Only the start
    /// of the download is retried: after the first byte is written, a failure
    /// is returned (retryable or not) and the caller starts over.
    pub async fn get_to_writer<W>(&self, key: &ObjectKey, writer: &mut W) -> Result<u64, StoreError>
    where
        W: AsyncWrite + Unpin + Send + ?Sized,
    {
        let download = self
            .attempts
            .run("get", key.as_str(), || self.open_download(key))
            .await?;
        download.copy_to(key, writer).await
    }

    /// Downloads an object to `path`, through a temp file beside it and a
    /// rename, so `path` is never half written. The whole download is retried.
    pub async fn get_to_file(&self, key: &ObjectKey, path: &Path) -> Result<u64, StoreError> {
        let name = path.file_name().ok_or_else(|| {
            StoreError::permanent("get", key.as_str(), "target path has no file name")
        })?;
        let temp = path.with_file_name(format!(
            ".{}.{}.tmp",
            name.to_string_lossy(),
            uuid::Uuid::new_v4().simple()
        ));
        let io = |e| StoreError::io("get", key.as_str(), e);
        let result = self
            .attempts
            .run("get", key.as_str(), || async {
                let download = self.open_download(key).await?;
                let mut file = tokio::fs::File::create(&temp).await.map_err(io)?;
                let size = download.copy_to(key, &mut file).await?;
                file.sync_all().await.map_err(io)?;
                Ok(size)
            })
            .await;
        match result {
            Ok(size) => {
                tokio::fs::rename(&temp, path).await.map_err(io)?;
                Ok(size)
            }
            Err(error) => {
                let _ = tokio::fs::remove_file(&temp).await;
                Err(error)
            }
        }
    }

    async fn open_download(&self, key: &ObjectKey) -> Result<Download, StoreError> {
        match &self.backend {
            Backend::Fs(fs) => fs.open_read(key).await.map(Download::File),
            Backend::S3(s3) => s3.open(key).await.map(|(body, _)| Download::S3(body)),
        }
    }

    pub async fn head(&self, key: &ObjectKey) -> Result<ObjectMeta, StoreError> {
        self.attempts
            .run("head", key.as_str(), || async {
                match &self.backend {
                    Backend::Fs(fs) => fs.head(key).await,
                    Backend::S3(s3) => s3.head(key).await,
                }
            })
            .await
    }

    /// Objects whose key starts with `prefix` (a plain string prefix, as S3
    /// lists), sorted by key. S3 pages are fetched (and retried) one by one.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ListedObject>, StoreError> {
        check_prefix(prefix)?;
        match &self.backend {
            Backend::Fs(fs) => self.attempts.run("list", prefix, || fs.list(prefix)).await,
            Backend::S3(s3) => {
                let mut objects = Vec::new();
                let mut token = None;
                loop {
                    let (page, next) = self
                        .attempts
                        .run("list", prefix, || s3.list_page(prefix, token.clone()))
                        .await?;
                    objects.extend(page);
                    match next {
                        Some(next) => token = Some(next),
                        None => break,
                    }
                }
                objects.sort_by(|a, b| a.key.cmp(&b.key));
                Ok(objects)
            }
        }
    }

    /// Deletes an object; deleting a missing one succeeds.
    pub async fn delete(&self, key: &ObjectKey) -> Result<(), StoreError> {
        self.attempts
            .run("delete", key.as_str(), || async {
                match &self.backend {
                    Backend::Fs(fs) => fs.delete(key).await,
                    Backend::S3(s3) => s3.delete(key, None).await,
                }
            })
            .await
    }

    /// Deletes many objects: on S3 in DeleteObjects batches of up to 1,000 keys
    /// (the S3 limit), each retried on its own.
    pub async fn delete_many(&self, keys: &[ObjectKey]) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Fs(fs) => {
                for key in keys {
                    self.attempts
                        .run("delete", key.as_str(), || fs.delete(key))
                        .await?;
                }
            }
            Backend::S3(s3) => {
                for batch in keys.chunks(S3Backend::delete_batch_size()) {
                    let first = batch[0].as_str();
                    self.attempts
                        .run("delete", first, || s3.delete_batch(batch))
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// The compare-and-swap store over the same root or bucket prefix: S3
    /// conditional writes, or the topology crate's filesystem store.
    pub fn cas_store(&self) -> Result<Arc<dyn CasStore>, StoreError> {
        match &self.backend {
            Backend::Fs(fs) => {
                let root = fs.root().to_path_buf();
                let store = FsCasStore::open(&root)
                    .map_err(|e| StoreError::io("open", &root.display().to_string(), e))?;
                Ok(Arc::new(store))
            }
            Backend::S3(_) => Ok(Arc::new(S3CasStore::new(self.clone())?)),
        }
    }

    pub(crate) fn s3_backend(&self) -> Option<&S3Backend> {
        match &self.backend {
            Backend::S3(s3) => Some(s3),
            Backend::Fs(_) => None,
        }
    }

    pub(crate) fn attempts(&self) -> &Attempts {
        &self.attempts
    }
}

/// An open download.
enum Download {
    File(tokio::fs::File),
    S3(aws_sdk_s3::primitives::ByteStream),
}

impl Download {
    /// Copies the body into `writer`. Network read errors are retryable,
    /// local write errors are not.
    async fn copy_to<W>(self, key: &ObjectKey, writer: &mut W) -> Result<u64, StoreError>
    where
        W: AsyncWrite + Unpin + Send + ?Sized,
    {
        let write_error = |e| StoreError::io("get", key.as_str(), e);
        let size = match self {
            Download::File(mut file) => tokio::io::copy(&mut file, writer)
                .await
                .map_err(write_error)?,
            Download::S3(mut body) => {
                let mut size = 0;
                while let Some(chunk) = body.next().await {
                    let chunk = chunk.map_err(|e| StoreError::Transient {
                        op: "get",
                        key: key.to_string(),
                        detail: format!("download interrupted: {e}"),
                        source: Some(Box::new(e)),
                    })?;
                    writer.write_all(&chunk).await.map_err(write_error)?;
                    size += chunk.len() as u64;
                }
                size
            }
        };
        writer.flush().await.map_err(write_error)?;
        Ok(size)
    }
}

/// Bytes read from a file at a time by [`file_range`].
const RANGE_CHUNK: usize = 256 * 1024;

/// The bytes `offset..offset + len` of `file`, read on the blocking pool in
/// chunks of 256 KiB, one at a time; a file that has become shorter ends the
/// stream with an error. Ranges of one open file read independently, so
/// several can stream at once (and again, for a retry).
pub fn file_range(
    file: Arc<std::fs::File>,
    offset: u64,
    len: u64,
) -> impl futures::Stream<Item = std::io::Result<Bytes>> + Send + Sync + 'static {
    use std::os::unix::fs::FileExt;
    futures::stream::try_unfold((file, offset, offset + len), |(file, at, end)| async move {
        if at >= end {
            return Ok(None);
        }
        let n = (end - at).min(RANGE_CHUNK as u64) as usize;
        let (file, chunk) = tokio::task::spawn_blocking(move || {
            let mut chunk = bytes::BytesMut::zeroed(n);
            file.read_exact_at(&mut chunk, at).map_err(|e| {
                if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    std::io::Error::other(format!(
                        "changed while being read: shorter than the {end} bytes it had"
                    ))
                } else {
                    e
                }
            })?;
            Ok::<_, std::io::Error>((file, chunk.freeze()))
        })
        .await
        .map_err(std::io::Error::other)??;
        Ok(Some((chunk, (file, at + n as u64, end))))
    })
}
