//! The S3 backend: any S3-compatible endpoint through aws-sdk-s3, one request
//! per method (multipart uploads are in `multipart.rs`), and the mapping of SDK
//! errors onto [`StoreError`].
//!
//! The SDK's own retries are disabled (`RetryConfig::disabled()`): the retry
//! layer in `retry.rs` is the only one, and it needs each error classified
//! here. With an explicit endpoint (moto, MinIO, Ceph) addressing is path-style,
//! because such servers rarely resolve `<bucket>.<host>`, and request checksums
//! are sent only where S3 requires them: the SDK's default CRC32 headers on
//! every upload are not understood by all S3-compatible servers, and the backup
//! layer verifies its own content hashes anyway.

use std::time::Duration;

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region, RequestChecksumCalculation};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedPart, Delete, ObjectIdentifier};
use aws_sdk_s3::Client;
use aws_smithy_http_client::tls;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use http_body::Frame;

use super::{ListedObject, ObjectKey, ObjectMeta, StoreError};

/// S3 allows at most this many keys per DeleteObjects request.
const DELETE_BATCH: usize = 1000;
/// S3's minimum size of every part of a multipart upload but the last.
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
/// S3's largest object in one PutObject.
const MAX_PUT_SIZE: u64 = 5 * 1024 * 1024 * 1024;

/// Where and how to reach the bucket.
#[derive(Debug, Clone)]
pub struct S3Config {
    pub bucket: String,
    /// Key prefix inside the bucket (`""` for the bucket root); no leading or
    /// trailing `/` needed.
    pub prefix: String,
    /// `None`: the standard AWS chain (env, profile, instance metadata).
    pub region: Option<String>,
    /// An S3-compatible endpoint such as `http://127.0.0.1:9000`; implies
    /// path-style addressing. `None`: AWS S3.
    pub endpoint: Option<String>,
    /// `None`: the standard AWS credential chain.
    pub credentials: Option<S3Credentials>,
    /// Size of each part of a multipart upload; objects no larger go up in one
    /// PutObject. At least 5 MiB (an S3 limit).
    pub part_size: u64,
    /// Objects whose size is known before they are sent (raw files) and is at
    /// most this go up as one streaming PutObject, however much larger than a
    /// part: one request, and no part buffers. Larger ones are multipart
    /// uploads. At most 5 GiB (an S3 limit).
    pub multipart_threshold: u64,
    /// Parts of one upload in flight at once; memory is bounded by
    /// `(upload_concurrency + 1) * part_size`.
    pub upload_concurrency: usize,
    pub connect_timeout: Duration,
    /// Longest wait for the next bytes of a response.
    pub read_timeout: Duration,
}

impl S3Config {
    pub fn new(bucket: impl Into<String>) -> Self {
        S3Config {
            bucket: bucket.into(),
            prefix: String::new(),
            region: None,
            endpoint: None,
            credentials: None,
            part_size: 16 * 1024 * 1024,
            multipart_threshold: 512 * 1024 * 1024,
            upload_concurrency: 4,
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(60),
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.bucket.is_empty() {
            return Err("s3 bucket is empty".into());
        }
        if self.part_size < MIN_PART_SIZE {
            return Err(format!(
                "s3 part size {} is below the 5 MiB minimum of s3",
                self.part_size
            ));
        }
        if self.multipart_threshold > MAX_PUT_SIZE {
            return Err(format!(
                "s3 multipart threshold {} is above the 5 GiB limit of a single s3 upload",
                self.multipart_threshold
            ));
        }
        if self.upload_concurrency == 0 {
            return Err("s3 upload concurrency must be at least 1".into());
        }
        let prefix = self.prefix.trim_matches('/');
        if !prefix.is_empty() {
            ObjectKey::new(prefix).map_err(|e| format!("s3 prefix: {e}"))?;
        }
        Ok(())
    }
}

/// Explicit static credentials (tests, S3-compatible servers).
#[derive(Clone)]
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub(crate) struct S3Backend {
    pub(super) client: Client,
    pub(super) bucket: String,
    /// `""` or `"some/prefix/"`.
    prefix: String,
    pub(super) part_size: u64,
    pub(super) multipart_threshold: u64,
    pub(super) upload_concurrency: usize,
}

impl S3Backend {
    pub(crate) async fn connect(config: &S3Config) -> Result<Self, StoreError> {
        config
            .validate()
            .map_err(|detail| StoreError::permanent("connect", &config.bucket, detail))?;
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http)
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(config.connect_timeout)
                    .read_timeout(config.read_timeout)
                    .build(),
            );
        if let Some(region) = &config.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(creds) = &config.credentials {
            loader = loader.credentials_provider(Credentials::new(
                creds.access_key_id.clone(),
                creds.secret_access_key.clone(),
                creds.session_token.clone(),
                None,
                "anchises-config",
            ));
        }
        let shared = loader.load().await;
        let mut builder = aws_sdk_s3::config::Builder::from(&shared);
        if shared.region().is_none() {
            // S3-compatible servers ignore the region but the signer needs one.
            builder = builder.region(Region::new("us-east-1"));
        }
        if let Some(endpoint) = &config.endpoint {
            builder = builder
                .endpoint_url(endpoint)
                .force_path_style(true)
                .request_checksum_calculation(RequestChecksumCalculation::WhenRequired);
        }
        let prefix = match config.prefix.trim_matches('/') {
            "" => String::new(),
            p => format!("{p}/"),
        };
        Ok(S3Backend {
            client: Client::from_conf(builder.build()),
            bucket: config.bucket.clone(),
            prefix,
            part_size: config.part_size,
            multipart_threshold: config.multipart_threshold,
            upload_concurrency: config.upload_concurrency,
        })
    }

    /// Creates the configured bucket (test servers; production buckets are
    /// made by the operator, with their lifecycle rules).
    #[cfg(feature = "testing")]
    pub(crate) async fn create_bucket(&self) -> Result<(), StoreError> {
        self.client
            .create_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map_err(|e| classify("create bucket", &self.bucket, e))?;
        Ok(())
    }

    pub(super) fn full_key(&self, key: &ObjectKey) -> String {
        format!("{}{}", self.prefix, key.as_str())
    }

    pub(crate) async fn put(&self, key: &ObjectKey, body: Bytes) -> Result<(), StoreError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .content_length(body.len() as i64)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| classify("put", key.as_str(), e))?;
        Ok(())
    }

    /// One PutObject of exactly `size` bytes whose body streams from `body`
    /// (sent with `UNSIGNED-PAYLOAD`: the SDK signs only bodies in memory).
    pub(crate) async fn put_stream<S>(
        &self,
        key: &ObjectKey,
        size: u64,
        body: S,
    ) -> Result<(), StoreError>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send + Sync + 'static,
    {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .content_length(size as i64)
            .body(streamed(body))
            .send()
            .await
            .map_err(|e| classify("put", key.as_str(), e))?;
        Ok(())
    }

    /// One UploadPart of exactly `len` bytes: from memory, or [`streamed`].
    pub(super) async fn upload_part(
        &self,
        key: &ObjectKey,
        full_key: &str,
        upload_id: &str,
        number: u64,
        len: u64,
        body: ByteStream,
    ) -> Result<CompletedPart, StoreError> {
        let output = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(full_key)
            .upload_id(upload_id)
            .part_number(number as i32)
            .content_length(len as i64)
            .body(body)
            .send()
            .await
            .map_err(|e| classify("put part", key.as_str(), e))?;
        Ok(CompletedPart::builder()
            .part_number(number as i32)
            .set_e_tag(output.e_tag)
            .build())
    }

    /// A conditional put: `If-None-Match: *` (`if_match` `None`) or
    /// `If-Match: <etag>`. Returns the new etag.
    pub(crate) async fn put_conditional(
        &self,
        key: &ObjectKey,
        body: Bytes,
        if_match: Option<&str>,
    ) -> Result<String, StoreError> {
        let request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .content_length(body.len() as i64)
            .body(ByteStream::from(body));
        let request = match if_match {
            None => request.if_none_match("*"),
            Some(etag) => request.if_match(etag),
        };
        let output = request
            .send()
            .await
            .map_err(|e| classify("put", key.as_str(), e))?;
        output
            .e_tag
            .ok_or_else(|| StoreError::permanent("put", key.as_str(), "response has no etag"))
    }

    pub(crate) async fn get(&self, key: &ObjectKey) -> Result<(Bytes, String), StoreError> {
        let (body, etag) = self.open(key).await?;
        let bytes = body.collect().await.map_err(|e| StoreError::Transient {
            op: "get",
            key: key.to_string(),
            detail: format!("reading the body failed: {e}"),
            source: Some(Box::new(e)),
        })?;
        Ok((bytes.into_bytes(), etag))
    }

    /// Starts a GetObject; the body streams from the returned `ByteStream`.
    pub(crate) async fn open(&self, key: &ObjectKey) -> Result<(ByteStream, String), StoreError> {
        let output = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .send()
            .await
            .map_err(|e| classify("get", key.as_str(), e))?;
        Ok((output.body, output.e_tag.unwrap_or_default()))
    }

    pub(crate) async fn head(&self, key: &ObjectKey) -> Result<ObjectMeta, StoreError> {
        let output = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .send()
            .await
            .map_err(|e| classify("head", key.as_str(), e))?;
        Ok(ObjectMeta {
            size: output.content_length.unwrap_or(0).max(0) as u64,
            etag: output.e_tag.unwrap_or_default(),
        })
    }

    /// One page of a listing; `None` as the next token ends it.
    pub(crate) async fn list_page(
        &self,
        prefix: &str,
        token: Option<String>,
    ) -> Result<(Vec<ListedObject>, Option<String>), StoreError> {
        let output = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(format!("{}{prefix}", self.prefix))
            .set_continuation_token(token)
            .send()
            .await
            .map_err(|e| classify("list", prefix, e))?;
        let mut objects = Vec::new();
        for object in output.contents.unwrap_or_default() {
            let Some(full) = object.key else { continue };
            let relative = full.strip_prefix(&self.prefix).unwrap_or(&full);
            match ObjectKey::new(relative) {
                Ok(key) => objects.push(ListedObject {
                    key,
                    size: object.size.unwrap_or(0).max(0) as u64,
                }),
                // Written by something else under our prefix; not ours to list.
                Err(_) => tracing::debug!(key = %full, "skipping an object with an invalid key"),
            }
        }
        let next = match output.is_truncated {
            Some(true) => output.next_continuation_token,
            _ => None,
        };
        Ok((objects, next))
    }

    /// Deleting a missing object succeeds, as S3 itself answers.
    pub(crate) async fn delete(
        &self,
        key: &ObjectKey,
        if_match: Option<&str>,
    ) -> Result<(), StoreError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .set_if_match(if_match.map(str::to_string))
            .send()
            .await
            .map_err(|e| classify("delete", key.as_str(), e))?;
        Ok(())
    }

    /// One DeleteObjects request of at most [`DELETE_BATCH`] keys.
    pub(crate) async fn delete_batch(&self, keys: &[ObjectKey]) -> Result<(), StoreError> {
        assert!(
            keys.len() <= DELETE_BATCH,
            "a delete batch holds at most 1000 keys"
        );
        let first = keys.first().map(ObjectKey::as_str).unwrap_or("");
        let objects = keys
            .iter()
            .map(|k| ObjectIdentifier::builder().key(self.full_key(k)).build())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StoreError::permanent("delete", first, e.to_string()))?;
        let delete = Delete::builder()
            .set_objects(Some(objects))
            .quiet(true)
            .build()
            .map_err(|e| StoreError::permanent("delete", first, e.to_string()))?;
        let output = self
            .client
            .delete_objects()
            .bucket(&self.bucket)
            .delete(delete)
            .send()
            .await
            .map_err(|e| classify("delete", first, e))?;
        // DeleteObjects answers 200 even when single keys fail; the failures are
        // listed in the body.
        if let Some(error) = output.errors.unwrap_or_default().into_iter().next() {
            let code = error.code.unwrap_or_default();
            let key = error.key.unwrap_or_default();
            let detail = format!("{code}: {}", error.message.unwrap_or_default());
            return Err(if is_transient_code(&code) {
                StoreError::Transient {
                    op: "delete",
                    key,
                    detail,
                    source: None,
                }
            } else {
                StoreError::Permanent {
                    op: "delete",
                    key,
                    detail,
                    source: None,
                }
            });
        }
        Ok(())
    }

    pub(crate) fn delete_batch_size() -> usize {
        DELETE_BATCH
    }
}

/// A request body that streams (the SDK neither buffers nor signs it).
pub(super) fn streamed<S>(body: S) -> ByteStream
where
    S: Stream<Item = std::io::Result<Bytes>> + Send + Sync + 'static,
{
    ByteStream::from_body_1_x(http_body_util::StreamBody::new(
        body.map(|chunk| chunk.map(Frame::data)),
    ))
}

fn is_transient_code(code: &str) -> bool {
    matches!(
        code,
        "SlowDown"
            | "Throttling"
            | "ThrottlingException"
            | "RequestTimeout"
            | "RequestTimeTooSkewed"
            | "InternalError"
            | "ServiceUnavailable"
    )
}

/// Maps an SDK error onto the store's: what a caller branches on (missing
/// object, failed precondition) and whether another attempt can help.
pub(crate) fn classify<E>(
    op: &'static str,
    key: &str,
    error: SdkError<E, HttpResponse>,
) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let key_string = key.to_string();
    let transient = |detail: String, error: SdkError<E, HttpResponse>| StoreError::Transient {
        op,
        key: key_string.clone(),
        detail,
        source: Some(Box::new(error)),
    };
    let permanent = |detail: String, error: SdkError<E, HttpResponse>| StoreError::Permanent {
        op,
        key: key_string.clone(),
        detail,
        source: Some(Box::new(error)),
    };
    match &error {
        SdkError::TimeoutError(_) => transient("request timed out".into(), error),
        SdkError::DispatchFailure(failure) => {
            let detail = format!(
                "cannot reach the s3 endpoint: {}",
                DisplayErrorContext(&error)
            );
            // A user error is a bad request or endpoint URL; everything else
            // (refused, reset, timed out) may heal.
            if failure.is_user() {
                permanent(detail, error)
            } else {
                transient(detail, error)
            }
        }
        SdkError::ResponseError(response) => {
            let detail = format!("unreadable response: {}", DisplayErrorContext(&error));
            if response.raw().status().as_u16() >= 500 {
                transient(detail, error)
            } else {
                permanent(detail, error)
            }
        }
        SdkError::ServiceError(service) => {
            let status = service_status(&error);
            let code = service.err().code().unwrap_or("").to_string();
            let message = service.err().message().unwrap_or("").to_string();
            match (status, code.as_str()) {
                (_, "NoSuchBucket") => permanent(
                    format!("bucket does not exist: {message} (http {status})"),
                    error,
                ),
                (
                    _,
                    "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "ExpiredToken"
                    | "InvalidToken" | "TokenRefreshRequired",
                ) => permanent(
                    format!("s3 refused the credentials: {code}: {message} (http {status})"),
                    error,
                ),
                (403, _) => permanent(
                    format!(
                        "access denied: the credentials are wrong or lack permission{}{} (http 403)",
                        if code.is_empty() { "" } else { ": " },
                        [code.as_str(), message.as_str()].join(" ").trim()
                    ),
                    error,
                ),
                (404, _) => StoreError::NotFound { key: key_string },
                (412, _) | (409, "ConditionalRequestConflict") => {
                    StoreError::PreconditionFailed { key: key_string }
                }
                (s, c) if s == 429 || s >= 500 || is_transient_code(c) => {
                    transient(format!("{code}: {message} (http {status})"), error)
                }
                _ => permanent(format!("{code}: {message} (http {status})"), error),
            }
        }
        _ => permanent(format!("{}", DisplayErrorContext(&error)), error),
    }
}

fn service_status<E>(error: &SdkError<E, HttpResponse>) -> u16 {
    error
        .raw_response()
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}
