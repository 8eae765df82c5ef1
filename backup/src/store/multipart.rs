//! Multipart uploads to S3, whose parts go up in parallel, from one of two
//! sources.
//!
//! - A reader ([`upload`]), read once: at most `upload_concurrency` parts are
//!   in flight and one more is being read, each `part_size` bytes in memory;
//!   a part is retried from memory. An object that fits in a part is one
//!   PutObject.
//! - Ranges of a source that can be read again ([`upload_ranges`], a file):
//!   each attempt of a part streams its range, so memory is that of the
//!   streams, whatever the part size.
//!
//! If anything fails the upload is aborted so S3 does not keep (and bill) the
//! orphaned parts. S3 allows at most 10,000 parts, so for an object of known
//! size the part size grows to fit it.

use std::future::Future;

use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;
use futures::Stream;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::task::JoinSet;

use super::s3::{classify, streamed, S3Backend};
use super::{Attempts, ObjectKey, StoreError};

/// S3's limit on the parts of one upload.
const MAX_PARTS: u64 = 10_000;

/// The part size for an object of `size` bytes: the configured one, or larger
/// (rounded up to a MiB) if the object would need more than 10,000 parts.
pub(crate) fn part_size_for(configured: u64, size: Option<u64>) -> u64 {
    const MIB: u64 = 1024 * 1024;
    match size {
        Some(size) if size.div_ceil(configured) > MAX_PARTS => {
            size.div_ceil(MAX_PARTS).div_ceil(MIB) * MIB
        }
        _ => configured,
    }
}

/// Uploads everything `reader` yields to `key`; returns the bytes written.
pub(crate) async fn upload<R>(
    s3: &S3Backend,
    attempts: &Attempts,
    key: &ObjectKey,
    reader: &mut R,
    part_size: u64,
) -> Result<u64, StoreError>
where
    R: AsyncRead + Unpin + Send + ?Sized,
{
    let first = read_part(key, reader, part_size).await?;
    if (first.len() as u64) < part_size {
        let size = first.len() as u64;
        attempts
            .run("put", key.as_str(), || s3.put(key, first.clone()))
            .await?;
        return Ok(size);
    }
    let upload_id = create(s3, attempts, key).await?;
    let parts = upload_parts(s3, attempts, key, &upload_id, first, reader, part_size).await;
    conclude(s3, attempts, key, &upload_id, parts).await
}

/// Uploads the `size` bytes of a source that can be read again in parts of
/// `part_size`: each attempt of the part at `offset` of `len` bytes sends
/// the stream `body(offset, len)` returns.
pub(crate) async fn upload_ranges<F, Fut, S>(
    s3: &S3Backend,
    attempts: &Attempts,
    key: &ObjectKey,
    size: u64,
    part_size: u64,
    body: F,
) -> Result<(), StoreError>
where
    F: Fn(u64, u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = S> + Send,
    S: Stream<Item = std::io::Result<Bytes>> + Send + Sync + 'static,
{
    let parts = size.div_ceil(part_size);
    if parts > MAX_PARTS {
        return Err(StoreError::permanent(
            "put",
            key.as_str(),
            format!("object exceeds s3's 10,000 parts of {part_size} bytes"),
        ));
    }
    let upload_id = create(s3, attempts, key).await?;
    let mut in_flight = JoinSet::new();
    let mut completed = Vec::new();
    let mut number = 0u64;
    let result = loop {
        while in_flight.len() < s3.upload_concurrency && number < parts {
            let offset = number * part_size;
            number += 1;
            let len = part_size.min(size - offset);
            let task = (
                s3.clone(),
                attempts.clone(),
                key.clone(),
                upload_id.clone(),
                body.clone(),
            );
            in_flight.spawn(async move {
                let (s3, attempts, key, upload_id, body) = task;
                let full_key = s3.full_key(&key);
                attempts
                    .run("put part", key.as_str(), || async {
                        let stream = streamed(body(offset, len).await);
                        s3.upload_part(&key, &full_key, &upload_id, number, len, stream)
                            .await
                    })
                    .await
            });
        }
        match in_flight.join_next().await {
            None => break Ok(()),
            Some(Ok(Ok(part))) => completed.push(part),
            Some(Ok(Err(error))) => break Err(error),
            Some(Err(e)) => {
                break Err(StoreError::permanent(
                    "put",
                    key.as_str(),
                    format!("upload task failed: {e}"),
                ))
            }
        }
    };
    // The parts still in flight stop before the upload is aborted.
    in_flight.shutdown().await;
    completed.sort_by_key(|p| p.part_number);
    let parts = result.map(|()| (completed, size));
    conclude(s3, attempts, key, &upload_id, parts)
        .await
        .map(drop)
}

/// Completes the upload with its `parts` (sorted) of `size` bytes in all,
/// or aborts it if they failed or it cannot be completed; returns the size.
async fn conclude(
    s3: &S3Backend,
    attempts: &Attempts,
    key: &ObjectKey,
    upload_id: &str,
    parts: Result<(Vec<CompletedPart>, u64), StoreError>,
) -> Result<u64, StoreError> {
    let result = match parts {
        Ok((parts, size)) => complete(s3, attempts, key, upload_id, parts, size)
            .await
            .map(|()| size),
        Err(error) => Err(error),
    };
    if result.is_err() {
        abort(s3, key, upload_id).await;
    }
    result
}

async fn create(
    s3: &S3Backend,
    attempts: &Attempts,
    key: &ObjectKey,
) -> Result<String, StoreError> {
    let full_key = s3.full_key(key);
    attempts
        .run("put", key.as_str(), || async {
            let output = s3
                .client
                .create_multipart_upload()
                .bucket(&s3.bucket)
                .key(&full_key)
                .send()
                .await
                .map_err(|e| classify("put", key.as_str(), e))?;
            output.upload_id.ok_or_else(|| {
                StoreError::permanent("put", key.as_str(), "no upload id in the response")
            })
        })
        .await
}

/// One attempt, outside the retry layer: a failed abort only leaves parts
/// for the bucket's lifecycle rule to clean up.
async fn abort(s3: &S3Backend, key: &ObjectKey, upload_id: &str) {
    let aborted = s3
        .client
        .abort_multipart_upload()
        .bucket(&s3.bucket)
        .key(s3.full_key(key))
        .upload_id(upload_id)
        .send()
        .await;
    if let Err(error) = aborted {
        tracing::warn!(key = %key, error = %classify("abort", key.as_str(), error), "abort of a failed multipart upload failed");
    }
}

async fn upload_parts<R>(
    s3: &S3Backend,
    attempts: &Attempts,
    key: &ObjectKey,
    upload_id: &str,
    first: Bytes,
    reader: &mut R,
    part_size: u64,
) -> Result<(Vec<CompletedPart>, u64), StoreError>
where
    R: AsyncRead + Unpin + Send + ?Sized,
{
    // Spawned tasks, so parts upload while the next one is read.
    let mut in_flight = JoinSet::new();
    let mut completed = Vec::new();
    let mut next = Some(first);
    let mut number = 0u64;
    let mut size = 0u64;
    loop {
        while in_flight.len() < s3.upload_concurrency {
            let Some(body) = next.take() else { break };
            number += 1;
            if number > MAX_PARTS {
                return Err(StoreError::permanent(
                    "put",
                    key.as_str(),
                    format!("object exceeds s3's 10,000 parts of {part_size} bytes"),
                ));
            }
            size += body.len() as u64;
            let last = (body.len() as u64) < part_size;
            let task = (
                s3.clone(),
                attempts.clone(),
                key.clone(),
                upload_id.to_string(),
            );
            in_flight.spawn(async move {
                let (s3, attempts, key, upload_id) = task;
                upload_part(&s3, &attempts, &key, &upload_id, number, body).await
            });
            if !last {
                let chunk = read_part(key, reader, part_size).await?;
                if !chunk.is_empty() {
                    next = Some(chunk);
                }
            }
        }
        match in_flight.join_next().await {
            None => break,
            Some(joined) => {
                let part = joined.map_err(|e| {
                    StoreError::permanent("put", key.as_str(), format!("upload task failed: {e}"))
                })??;
                completed.push(part);
            }
        }
    }
    completed.sort_by_key(|p| p.part_number);
    Ok((completed, size))
}

async fn upload_part(
    s3: &S3Backend,
    attempts: &Attempts,
    key: &ObjectKey,
    upload_id: &str,
    number: u64,
    body: Bytes,
) -> Result<CompletedPart, StoreError> {
    let full_key = s3.full_key(key);
    let len = body.len() as u64;
    attempts
        .run("put part", key.as_str(), || {
            s3.upload_part(key, &full_key, upload_id, number, len, body.clone().into())
        })
        .await
}

/// Completes the upload. An attempt after one whose answer was lost may find
/// the upload gone (`NoSuchUpload`) because that one completed it: the
/// object of `size` bytes made of as many parts is then taken as this
/// upload's.
async fn complete(
    s3: &S3Backend,
    attempts: &Attempts,
    key: &ObjectKey,
    upload_id: &str,
    parts: Vec<CompletedPart>,
    size: u64,
) -> Result<(), StoreError> {
    const OP: &str = "complete upload";
    let full_key = s3.full_key(key);
    let part_count = parts.len();
    let upload = CompletedMultipartUpload::builder()
        .set_parts(Some(parts))
        .build();
    let sent = std::sync::atomic::AtomicU32::new(0);
    attempts
        .run(OP, key.as_str(), || async {
            let earlier = sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let answer = s3
                .client
                .complete_multipart_upload()
                .bucket(&s3.bucket)
                .key(&full_key)
                .upload_id(upload_id)
                .multipart_upload(upload.clone())
                .send()
                .await
                .map_err(|e| classify(OP, key.as_str(), e));
            match answer {
                Ok(_) => Ok(()),
                Err(StoreError::NotFound { .. }) if earlier > 0 => {
                    match s3.head(key).await {
                        Ok(meta) if is_this_upload(&meta, size, part_count) => Ok(()),
                        _ => Err(StoreError::permanent(
                            OP,
                            key.as_str(),
                            "the multipart upload is gone and no object of its size and parts took its place",
                        )),
                    }
                }
                Err(e) => Err(e),
            }
        })
        .await
}

/// Whether `meta` is of an object of `size` bytes that a multipart upload
/// of `parts` parts made (S3 gives those an ETag ending in `-<parts>`).
fn is_this_upload(meta: &super::ObjectMeta, size: u64, parts: usize) -> bool {
    meta.size == size && meta.etag.trim_matches('"').ends_with(&format!("-{parts}"))
}

/// Reads up to `part_size` bytes; fewer only at the end of the stream.
async fn read_part<R>(key: &ObjectKey, reader: &mut R, part_size: u64) -> Result<Bytes, StoreError>
where
    R: AsyncRead + Unpin + Send + ?Sized,
{
    let mut buffer = Vec::with_capacity(part_size as usize);
    (&mut *reader)
        .take(part_size)
        .read_to_end(&mut buffer)
        .await
        .map_err(|e| {
            StoreError::permanent(
                "put",
                key.as_str(),
                format!("reading the source failed: {e}"),
            )
        })?;
    Ok(Bytes::from(buffer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_object_of_the_uploads_size_and_parts_is_taken_for_it() {
        let meta = |size: u64, etag: &str| crate::store::ObjectMeta {
            size,
            etag: etag.into(),
        };
        assert!(is_this_upload(
            &meta(11, "\"9b2cf535f27731c974343645a3985328-3\""),
            11,
            3
        ));
        assert!(is_this_upload(
            &meta(11, "9b2cf535f27731c974343645a3985328-3"),
            11,
            3
        ));
        assert!(
            !is_this_upload(&meta(12, "\"9b2c-3\""), 11, 3),
            "another size"
        );
        assert!(
            !is_this_upload(&meta(11, "\"9b2c-13\""), 11, 3),
            "other parts"
        );
        assert!(
            !is_this_upload(&meta(11, "\"9b2cf535f27731c974343645a3985328\""), 11, 3),
            "a single put"
        );
    }
}
