//! Where DAGs come from: an S3 prefix, or a local folder for debugging.
//!
//! Both answer the same two questions: what is there ([`Source::list`], one
//! ListObjectsV2 pass over every page) and give me this exact version of one
//! object ([`Source::fetch`], streamed into a staging file, verified, fsynced).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use airside_core::aws::{self, ErrorClass};
use aws_sdk_s3::primitives::ByteStream;
use aws_smithy_runtime_api::client::http::SharedHttpConnector;
use tokio::io::AsyncWriteExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::direct::{Answer, DirectGet};
use crate::verify::{CHECKSUM_MODE, Check};

/// One object as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteObject {
    /// The key relative to the prefix (what maps to a path under --dest).
    pub rel_key: String,
    /// The ETag without quotes (for a local source: size and mtime).
    pub etag: String,
    /// Size in bytes.
    pub size: u64,
    /// Last modification time; published files get it as their mtime, so several
    /// dagsync processes sharing one folder agree on what a correct file looks like.
    pub last_modified: SystemTime,
}

/// Parsed `--source`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    /// `s3://bucket/prefix/` (the prefix always ends in `/`, or is empty).
    S3 {
        /// Bucket name.
        bucket: String,
        /// Key prefix, empty or ending in `/`.
        prefix: String,
    },
    /// A local directory (`/path` or `file:///path`).
    Local(PathBuf),
}

impl SourceSpec {
    /// Parses `s3://BUCKET/PREFIX/`, `file://DIR` or a path.
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Some(rest) = text.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(format!(
                    "--source {text:?} has no bucket name (use s3://BUCKET/PREFIX/)"
                ));
            }
            let mut prefix = prefix.to_string();
            // "dev" must not match "dev2/…": a prefix is a folder.
            if !prefix.is_empty() && !prefix.ends_with('/') {
                prefix.push('/');
            }
            return Ok(SourceSpec::S3 {
                bucket: bucket.to_string(),
                prefix,
            });
        }
        if text.contains("://") && !text.starts_with("file://") {
            return Err(format!(
                "--source {text:?}: only s3://BUCKET/PREFIX/, file://DIR or a local path are supported"
            ));
        }
        let path = text.strip_prefix("file://").unwrap_or(text);
        if path.is_empty() {
            return Err("--source is empty".into());
        }
        Ok(SourceSpec::Local(PathBuf::from(path)))
    }

    /// For logs.
    pub fn display(&self) -> String {
        match self {
            SourceSpec::S3 { bucket, prefix } => format!("s3://{bucket}/{prefix}"),
            SourceSpec::Local(p) => format!("file://{}", p.display()),
        }
    }
}

/// A failure to list or fetch.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The service answered with an error or could not be reached.
    #[error("{operation} failed ({}): {message}", class.as_str())]
    Service {
        /// The S3 operation.
        operation: &'static str,
        /// What kind of failure.
        class: ErrorClass,
        /// The service's code and message, or the transport error.
        message: String,
    },
    /// The object changed between listing and fetching (If-Match failed).
    #[error(
        "{key} changed after it was listed (S3 no longer has ETag {etag}); it will be fetched in the next cycle"
    )]
    Changed {
        /// The relative key.
        key: String,
        /// The listed ETag the request was pinned to.
        etag: String,
    },
    /// The bytes received are not the listed object.
    #[error(
        "{key}: the downloaded bytes failed the {check} check ({detail}); the file was not published"
    )]
    Integrity {
        /// The relative key.
        key: String,
        /// Which check failed ([`Check::as_str`]).
        check: &'static str,
        /// What did not match.
        detail: String,
    },
    /// A local file operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl SourceError {
    /// The class used for retry decisions and exit codes.
    pub fn class(&self) -> ErrorClass {
        match self {
            SourceError::Service { class, .. } => *class,
            SourceError::Changed { .. } | SourceError::Integrity { .. } => ErrorClass::Transient,
            SourceError::Io { source, .. } => match source.kind() {
                std::io::ErrorKind::NotFound => ErrorClass::NotFound,
                std::io::ErrorKind::PermissionDenied => ErrorClass::AccessDenied,
                _ => ErrorClass::Transient,
            },
        }
    }

    fn io(path: &Path, source: std::io::Error) -> Self {
        SourceError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// A connected source.
#[derive(Debug, Clone)]
pub enum Source {
    /// An S3 prefix.
    S3 {
        /// The client.
        client: aws_sdk_s3::Client,
        /// Bucket name.
        bucket: String,
        /// Prefix, empty or ending in `/`.
        prefix: String,
        /// The direct GetObject path, when enabled.
        direct: Option<Arc<DirectPath>>,
        /// Bytes that in-flight downloads may hold in memory (see [`MemoryBudget`]).
        budget: MemoryBudget,
    },
    /// A local folder.
    Local {
        /// The folder.
        root: PathBuf,
    },
}

impl Source {
    /// Builds an S3 source from an SDK config (path-style when a custom endpoint is set).
    /// With a `direct` connector, objects are fetched through [`crate::direct`] first.
    pub fn s3(
        config: &aws_config::SdkConfig,
        bucket: String,
        prefix: String,
        direct: Option<aws_smithy_http_client::Connector>,
    ) -> Self {
        let s3_config = aws_sdk_s3::config::Builder::from(config)
            .force_path_style(aws::use_path_style(config))
            // dagsync verifies every body itself ([`crate::verify`]), asking for checksums
            // explicitly: one authority, whose failures name the key and the check, instead
            // of a second, SDK-side validation that surfaces as an opaque stream error.
            .response_checksum_validation(
                aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired,
            )
            .build();
        let body_timeout = config
            .timeout_config()
            .and_then(|t| t.read_timeout())
            .unwrap_or(Duration::from_secs(30));
        Source::S3 {
            client: aws_sdk_s3::Client::from_conf(s3_config),
            bucket,
            prefix,
            budget: MemoryBudget::new(DEFAULT_MEMORY_BUDGET),
            direct: direct.map(|connector| {
                Arc::new(DirectPath {
                    provider: config.credentials_provider(),
                    connector: SharedHttpConnector::new(connector),
                    body_timeout,
                    prepared: tokio::sync::OnceCell::new(),
                    breaker: std::sync::Mutex::new(Breaker::default()),
                })
            }),
        }
    }

    /// Sets how many bytes in-flight downloads may hold in memory (S3 sources only).
    pub fn with_memory_budget(mut self, bytes: u64) -> Self {
        if let Source::S3 { budget, .. } = &mut self {
            *budget = MemoryBudget::new(bytes);
        }
        self
    }

    /// Lists every object under the source, following every page. A failure on any page
    /// fails the whole listing: an incomplete listing must never drive deletions.
    pub async fn list(&self) -> Result<Vec<RemoteObject>, SourceError> {
        match self {
            Source::S3 {
                client,
                bucket,
                prefix,
                ..
            } => list_s3(client, bucket, prefix).await,
            Source::Local { root } => {
                let root = root.clone();
                tokio::task::spawn_blocking(move || list_local(&root))
                    .await
                    .map_err(|e| SourceError::io(Path::new("."), std::io::Error::other(e)))?
            }
        }
    }

    /// Fetches exactly the listed version of `obj` into `to` (a new file), verifies its size
    /// (and MD5 where the ETag is one) and sets its mtime.
    /// `writes` says whether a small object may be written on the calling thread
    /// ([`Writes::Inline`], a local disk) or must go to the blocking pool.
    pub async fn fetch(
        &self,
        obj: &RemoteObject,
        to: &Path,
        writes: Writes,
    ) -> Result<Fetched, SourceError> {
        match self {
            Source::S3 {
                client,
                bucket,
                prefix,
                direct,
                budget,
            } => {
                let key = format!("{prefix}{}", obj.rel_key);
                // Held until the body is written: what does not fit streams to disk.
                let permit = budget.try_reserve(obj.size);
                // The direct path reads bodies whole: only with a reservation.
                if let Some(direct) = direct.as_deref().filter(|_| permit.is_some()) {
                    match fetch_direct(direct, client, bucket, &key, obj, to, writes).await {
                        Ok(Some(bytes)) => {
                            return Ok(Fetched {
                                bytes,
                                via: Via::Direct,
                            });
                        }
                        Ok(None) => {}
                        Err(e) => return Err(e),
                    }
                }
                let bytes = fetch_s3(client, bucket, &key, obj, to, writes, permit).await?;
                Ok(Fetched {
                    bytes,
                    via: Via::Sdk,
                })
            }
            Source::Local { root } => {
                let from = crate::keys::dest_path(root, &obj.rel_key);
                let (obj, to) = (obj.clone(), to.to_path_buf());
                let bytes = tokio::task::spawn_blocking(move || copy_local(&from, &obj, &to))
                    .await
                    .map_err(|e| SourceError::io(Path::new("."), std::io::Error::other(e)))??;
                Ok(Fetched {
                    bytes,
                    via: Via::Copy,
                })
            }
        }
    }
}

/// One fetched object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fetched {
    /// Bytes written.
    pub bytes: u64,
    /// How it was fetched.
    pub via: Via,
}

/// How an object was fetched (the `via` label of `dagsync_objects_downloaded_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// dagsync's direct GetObject ([`crate::direct`]).
    Direct,
    /// The AWS SDK's GetObject (direct path off, not applicable, or it failed).
    Sdk,
    /// A copy from a local source.
    Copy,
}

impl Via {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Direct => "direct",
            Via::Sdk => "sdk",
            Via::Copy => "copy",
        }
    }
}

/// The direct GetObject path of an S3 source, prepared on first use.
#[derive(Debug)]
pub struct DirectPath {
    /// The same provider the S3 client was built with.
    provider: Option<aws_credential_types::provider::SharedCredentialsProvider>,
    connector: SharedHttpConnector,
    body_timeout: Duration,
    /// `Some(None)` once it is known not to apply to this endpoint.
    prepared: tokio::sync::OnceCell<Option<DirectGet>>,
    breaker: std::sync::Mutex<Breaker>,
}

/// After this many direct attempts in a row fail, the direct path rests for
/// [`DIRECT_REST`]: a failure that repeats (a skewed clock, a proxy that rewrites requests)
/// would otherwise cost every object two requests.
const DIRECT_TRIP_AFTER: u32 = 8;
/// How long the direct path rests once tripped.
const DIRECT_REST: Duration = Duration::from_secs(300);

/// Consecutive direct failures, and until when the direct path rests.
#[derive(Debug, Default)]
struct Breaker {
    failures: u32,
    resting_until: Option<std::time::Instant>,
}

impl DirectPath {
    fn resting(&self) -> bool {
        let breaker = self.breaker.lock().unwrap_or_else(|e| e.into_inner());
        breaker
            .resting_until
            .is_some_and(|until| std::time::Instant::now() < until)
    }

    fn succeeded(&self) {
        self.breaker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .failures = 0;
    }

    /// Counts a failed direct attempt (it is repeated through the SDK).
    fn failed(&self, key: &str, why: &str) {
        metrics::counter!(crate::telemetry::DIRECT_FALLBACKS).increment(1);
        tracing::debug!(
            key,
            reason = why,
            "direct GetObject failed; repeating it through the SDK"
        );
        let mut breaker = self.breaker.lock().unwrap_or_else(|e| e.into_inner());
        breaker.failures += 1;
        if breaker.failures >= DIRECT_TRIP_AFTER {
            breaker.failures = 0;
            breaker.resting_until = Some(std::time::Instant::now() + DIRECT_REST);
            tracing::warn!(
                reason = why,
                failures = DIRECT_TRIP_AFTER,
                rest_s = DIRECT_REST.as_secs(),
                "direct GetObject failed repeatedly; using the SDK for a while"
            );
        }
    }
}

/// Fetches `obj` through the direct path. `Ok(None)`: not done, repeat it through the SDK
/// (the reason is logged at debug level and counted); `Err` only for what the SDK path
/// would answer the same way (the object changed, or its bytes do not match the listing).
async fn fetch_direct(
    direct: &DirectPath,
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    obj: &RemoteObject,
    to: &Path,
    writes: Writes,
) -> Result<Option<u64>, SourceError> {
    if direct.resting() {
        return Ok(None);
    }
    let prepared = direct
        .prepared
        .get_or_try_init(|| {
            DirectGet::prepare(
                client,
                direct.provider.clone(),
                direct.connector.clone(),
                direct.body_timeout,
                bucket,
                key,
            )
        })
        .await;
    let get = match prepared {
        Ok(Some(get)) => get,
        Ok(None) => return Ok(None),
        Err(why) => {
            direct.failed(key, &why);
            return Ok(None);
        }
    };
    let (body, check) = match get.get(key, &obj.etag).await {
        Ok(Answer::Body(body, check)) => (body, check),
        Ok(Answer::Changed) => {
            direct.succeeded();
            return Err(SourceError::Changed {
                key: obj.rel_key.clone(),
                etag: obj.etag.clone(),
            });
        }
        Err(why) => {
            direct.failed(key, &why);
            return Ok(None);
        }
    };
    let data = match read_body(body, obj, &check, Some(get.body_timeout())).await {
        Ok(data) => data,
        Err(ReadError::Body(why)) => {
            direct.failed(key, &why);
            return Ok(None);
        }
        Err(ReadError::Integrity(e)) => return Err(e),
    };
    direct.succeeded();
    write_in_memory(data, to, obj.last_modified, writes)
        .await
        .map(Some)
}

/// Why reading a body failed.
enum ReadError {
    /// The transfer failed (dropped, stalled).
    Body(String),
    /// The bytes are not the listed object.
    Integrity(SourceError),
}

/// Reads a whole body into a buffer of the listed size (one copy), verifying it as
/// `check` says ([`crate::verify`]). `chunk_timeout` bounds the silence between chunks.
async fn read_body(
    mut body: ByteStream,
    obj: &RemoteObject,
    check: &Check,
    chunk_timeout: Option<Duration>,
) -> Result<Vec<u8>, ReadError> {
    let mut verifier = check.start();
    let mut data = Vec::with_capacity(obj.size as usize);
    loop {
        let next = match chunk_timeout {
            Some(limit) => tokio::time::timeout(limit, body.try_next())
                .await
                .map_err(|_| ReadError::Body(format!("no data for {limit:?}")))?,
            None => body.try_next().await,
        };
        let Some(chunk) = next.map_err(|e| ReadError::Body(e.to_string()))? else {
            break;
        };
        verifier.update(&chunk);
        // Never grow past the listed size: a longer body fails its size check below
        // without the buffer (and the memory budget) being exceeded.
        if data.len() + chunk.len() <= obj.size as usize {
            data.extend_from_slice(&chunk);
        }
    }
    verifier.finish(obj).map_err(ReadError::Integrity)?;
    Ok(data)
}

/// How staged files are written: where the blocking calls of a small write may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writes {
    /// On the calling (runtime) thread. For a local disk, where creating and writing a
    /// DAG-sized file takes tens of microseconds: handing each one to the blocking pool
    /// and back cost more than the write (two thread wake-ups per file; perf of a
    /// 2,000-file sync: about a tenth of its CPU in context switches).
    Inline,
    /// On tokio's blocking pool. For a network filesystem (EFS is NFS), where each
    /// create is a round trip to the file server that must not stall other downloads.
    Offload,
}

/// Writes a complete object (see [`IN_MEMORY_MAX`]), on this thread or off it.
async fn write_in_memory(
    data: Vec<u8>,
    to: &Path,
    mtime: SystemTime,
    writes: Writes,
) -> Result<u64, SourceError> {
    let len = data.len() as u64;
    if writes == Writes::Inline {
        write_staged(to, &data, mtime)?;
        return Ok(len);
    }
    let to = to.to_path_buf();
    tokio::task::spawn_blocking(move || write_staged(&to, &data, mtime))
        .await
        .map_err(|e| SourceError::io(Path::new("."), std::io::Error::other(e)))??;
    Ok(len)
}

/// Objects up to this size may be read into memory and written with one blocking call:
/// for DAG-sized files that saves the thread hand-offs of streaming through tokio::fs
/// (measured: 2,000 small files went from 32,000 futex calls to a few thousand).
const IN_MEMORY_MAX: u64 = 8 * 1024 * 1024;

/// The default [`MemoryBudget`]: every task definition gives the dagsync container a
/// 64 MiB hard limit, and the benchmark's target is a 32 MiB peak. Measured with
/// dist/dagsync on 40 objects of 7 MiB plus 2,000 DAG files (bench/dagsync/RESULTS.md):
/// a 16 MiB budget peaked at 32.6-34.1 MiB, so the default is 8 MiB. DAG-sized files
/// still go through memory; only what does not fit streams to disk.
pub const DEFAULT_MEMORY_BUDGET: u64 = 8 * 1024 * 1024;

/// A budget of bytes for bodies held whole in memory, across all in-flight downloads.
/// A download reserves its object's size before it starts; when the reservation does not
/// fit (or the object is over [`IN_MEMORY_MAX`]), the body streams to its staging file
/// instead. So memory is bounded in bytes, not in the number of concurrent downloads.
#[derive(Debug, Clone)]
pub struct MemoryBudget {
    bytes: u64,
    permits: Arc<Semaphore>,
}

impl MemoryBudget {
    /// A budget of `bytes` (at most 4 GiB are used).
    pub fn new(bytes: u64) -> Self {
        let bytes = bytes.min(u64::from(u32::MAX));
        Self {
            bytes,
            permits: Arc::new(Semaphore::new(bytes as usize)),
        }
    }

    /// Reserves `size` bytes if they fit now (never waits: a download that does not fit
    /// streams to disk rather than queueing behind others).
    pub fn try_reserve(&self, size: u64) -> Option<OwnedSemaphorePermit> {
        if size > IN_MEMORY_MAX || size > self.bytes {
            return None;
        }
        // An empty body still takes one byte, so that every reservation is a real permit.
        self.permits
            .clone()
            .try_acquire_many_owned(size.max(1) as u32)
            .ok()
    }
}

/// Writes a complete staged file: create (never overwrite), write, mtime, fsync.
fn write_staged(to: &Path, data: &[u8], mtime: SystemTime) -> Result<(), SourceError> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)
        .map_err(|e| SourceError::io(to, e))?;
    f.write_all(data).map_err(|e| SourceError::io(to, e))?;
    finish_staged(&f, to, mtime)
}

/// Sets the object's LastModified as mtime. Durability comes from one `syncfs` per batch
/// before anything is renamed into place ([`crate::staging::sync_filesystem`]), not from an
/// fsync per file: on a 2,000-file sync, per-file fsyncs were 2,001 device flushes.
fn finish_staged(f: &std::fs::File, to: &Path, mtime: SystemTime) -> Result<(), SourceError> {
    f.set_modified(mtime).map_err(|e| SourceError::io(to, e))
}

fn copy_local(from: &Path, obj: &RemoteObject, to: &Path) -> Result<u64, SourceError> {
    let meta = std::fs::metadata(from).map_err(|e| SourceError::io(from, e))?;
    if local_etag(&meta) != obj.etag {
        return Err(SourceError::Changed {
            key: obj.rel_key.clone(),
            etag: obj.etag.clone(),
        });
    }
    let mut src = std::fs::File::open(from).map_err(|e| SourceError::io(from, e))?;
    let mut dst = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)
        .map_err(|e| SourceError::io(to, e))?;
    let written = std::io::copy(&mut src, &mut dst).map_err(|e| SourceError::io(to, e))?;
    if written != obj.size {
        return Err(SourceError::Integrity {
            key: obj.rel_key.clone(),
            check: Check::SizeOnly.as_str(),
            detail: format!("expected {} bytes, got {written}", obj.size),
        });
    }
    finish_staged(&dst, to, obj.last_modified)?;
    Ok(written)
}

fn service_error<E>(
    operation: &'static str,
    err: &aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> SourceError
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    SourceError::Service {
        operation,
        class: aws::classify(err),
        message: aws::describe(err),
    }
}

async fn list_s3(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
) -> Result<Vec<RemoteObject>, SourceError> {
    let mut pages = client
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .into_paginator()
        .send();
    let mut out = Vec::new();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| service_error("ListObjectsV2", &e))?;
        for o in page.contents() {
            let Some(key) = o.key() else { continue };
            let Some(rel) = key.strip_prefix(prefix) else {
                continue;
            };
            out.push(RemoteObject {
                rel_key: rel.to_string(),
                etag: o.e_tag().unwrap_or_default().trim_matches('"').to_string(),
                size: o.size().unwrap_or(0).max(0) as u64,
                last_modified: o.last_modified().map_or(UNIX_EPOCH, to_system_time),
            });
        }
    }
    Ok(out)
}

fn to_system_time(dt: &aws_smithy_types::DateTime) -> SystemTime {
    let secs = dt.secs();
    if secs < 0 {
        return UNIX_EPOCH;
    }
    UNIX_EPOCH + Duration::new(secs as u64, dt.subsec_nanos())
}

/// The verification a GetObject answer of the SDK calls for (its checksum and encryption
/// headers, as the SDK parsed them).
fn check_of(out: &aws_sdk_s3::operation::get_object::GetObjectOutput, etag: &str) -> Check {
    let sse = out.server_side_encryption().map(|s| s.as_str());
    let kind = out.checksum_type().map(|t| t.as_str());
    Check::from_response(etag, |name| match name {
        "x-amz-checksum-crc64nvme" => out.checksum_crc64_nvme(),
        "x-amz-checksum-crc32c" => out.checksum_crc32_c(),
        "x-amz-checksum-crc32" => out.checksum_crc32(),
        "x-amz-checksum-sha256" => out.checksum_sha256(),
        "x-amz-checksum-sha1" => out.checksum_sha1(),
        "x-amz-checksum-type" => kind,
        "x-amz-server-side-encryption" => sse,
        "x-amz-server-side-encryption-customer-algorithm" => out.sse_customer_algorithm(),
        _ => None,
    })
}

/// GetObject through the SDK. With a memory `permit` the body is read whole and written
/// with one call; without one it streams to the staging file chunk by chunk.
async fn fetch_s3(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    obj: &RemoteObject,
    to: &Path,
    writes: Writes,
    permit: Option<OwnedSemaphorePermit>,
) -> Result<u64, SourceError> {
    let resp = client
        .get_object()
        .bucket(bucket)
        .key(key)
        // Exactly the listed version: a concurrent upload must not slip in unverified.
        .if_match(format!("\"{}\"", obj.etag))
        .customize()
        // Ask for S3's full-object checksum without the SDK validating it (see Source::s3).
        .mutate_request(|req| {
            req.headers_mut().insert(CHECKSUM_MODE.0, CHECKSUM_MODE.1);
        })
        .send()
        .await;
    let resp = match resp {
        Ok(r) => r,
        Err(e) => {
            let status = e.raw_response().map(|r| r.status().as_u16());
            if status == Some(412) {
                return Err(SourceError::Changed {
                    key: obj.rel_key.clone(),
                    etag: obj.etag.clone(),
                });
            }
            return Err(service_error("GetObject", &e));
        }
    };
    let check = check_of(&resp, &obj.etag);
    let mut body = resp.body;
    let mtime = obj.last_modified;
    let body_error = |e: &dyn std::fmt::Display| SourceError::Service {
        operation: "GetObject",
        class: ErrorClass::Transient,
        message: format!("reading the body of {key}: {e}"),
    };
    if let Some(permit) = permit {
        // The SDK's stalled-stream protection bounds the silence here.
        let data = read_body(body, obj, &check, None)
            .await
            .map_err(|e| match e {
                ReadError::Body(why) => body_error(&why),
                ReadError::Integrity(e) => e,
            })?;
        let written = write_in_memory(data, to, mtime, writes).await;
        drop(permit);
        return written;
    }
    // Stream to disk: one network chunk in memory at a time.
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)
        .await
        .map_err(|e| SourceError::io(to, e))?;
    let mut verifier = check.start();
    let mut written = 0u64;
    while let Some(chunk) = body.try_next().await.map_err(|e| body_error(&e))? {
        verifier.update(&chunk);
        written += chunk.len() as u64;
        file.write_all(&chunk)
            .await
            .map_err(|e| SourceError::io(to, e))?;
    }
    file.flush().await.map_err(|e| SourceError::io(to, e))?;
    verifier.finish(obj)?;
    let file = file.into_std().await;
    let to = to.to_path_buf();
    tokio::task::spawn_blocking(move || finish_staged(&file, &to, mtime))
        .await
        .map_err(|e| SourceError::io(Path::new("."), std::io::Error::other(e)))??;
    Ok(written)
}

fn mtime_nanos(meta: &std::fs::Metadata) -> u128 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos())
}

/// A local file's identity: size and mtime (a local source has no ETag).
fn local_etag(meta: &std::fs::Metadata) -> String {
    format!("local-{:x}-{:x}", meta.len(), mtime_nanos(meta))
}

fn list_local(root: &Path) -> Result<Vec<RemoteObject>, SourceError> {
    let mut out = Vec::new();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| SourceError::io(&dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| SourceError::io(&dir, e))?;
            let name = entry.file_name().to_string_lossy().to_string();
            let rel_key = format!("{rel}{name}");
            // Follow symlinks as a user editing DAGs would expect.
            let meta =
                std::fs::metadata(entry.path()).map_err(|e| SourceError::io(&entry.path(), e))?;
            if meta.is_dir() {
                if rel.is_empty() && name == crate::keys::OWN_DIR {
                    continue;
                }
                stack.push((entry.path(), format!("{rel_key}/")));
            } else if meta.is_file() {
                out.push(RemoteObject {
                    etag: local_etag(&meta),
                    size: meta.len(),
                    last_modified: meta.modified().unwrap_or(UNIX_EPOCH),
                    rel_key,
                });
            }
        }
    }
    out.sort_by(|a, b| a.rel_key.cmp(&b.rel_key));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sources() {
        assert_eq!(
            SourceSpec::parse("s3://b/dev").unwrap(),
            SourceSpec::S3 {
                bucket: "b".into(),
                prefix: "dev/".into()
            }
        );
        assert_eq!(
            SourceSpec::parse("s3://b").unwrap(),
            SourceSpec::S3 {
                bucket: "b".into(),
                prefix: "".into()
            }
        );
        assert_eq!(
            SourceSpec::parse("file:///tmp/x").unwrap(),
            SourceSpec::Local("/tmp/x".into())
        );
        assert_eq!(
            SourceSpec::parse("./dags").unwrap(),
            SourceSpec::Local("./dags".into())
        );
        assert!(SourceSpec::parse("s3:///x").is_err());
        assert!(SourceSpec::parse("gs://b/x").is_err());
    }

    #[tokio::test]
    async fn small_objects_are_written_inline_or_on_the_blocking_pool() {
        let dir = tempfile::tempdir().unwrap();
        let mtime = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        for (i, writes) in [Writes::Inline, Writes::Offload].into_iter().enumerate() {
            let to = dir.path().join(format!("{i}.part"));
            let n = write_in_memory(b"dag = 1\n".to_vec(), &to, mtime, writes)
                .await
                .unwrap();
            assert_eq!(n, 8);
            assert_eq!(std::fs::read(&to).unwrap(), b"dag = 1\n");
            assert_eq!(std::fs::metadata(&to).unwrap().modified().unwrap(), mtime);
            // A staged path is never overwritten, whichever thread writes it.
            let again = write_in_memory(b"x".to_vec(), &to, mtime, writes).await;
            assert!(matches!(again, Err(SourceError::Io { .. })), "{writes:?}");
        }
    }

    #[test]
    fn the_memory_budget_is_counted_in_bytes() {
        let budget = MemoryBudget::new(10 * 1024 * 1024);
        let a = budget.try_reserve(7 * 1024 * 1024).expect("fits");
        // 7 + 7 MiB does not fit in 10: the second download streams instead of waiting.
        assert!(budget.try_reserve(7 * 1024 * 1024).is_none());
        assert!(budget.try_reserve(3 * 1024 * 1024).is_some());
        drop(a);
        assert!(budget.try_reserve(7 * 1024 * 1024).is_some());
        // Over IN_MEMORY_MAX always streams, whatever the budget.
        assert!(
            MemoryBudget::new(u64::MAX)
                .try_reserve(IN_MEMORY_MAX + 1)
                .is_none()
        );
        // A budget smaller than an object never holds it.
        assert!(MemoryBudget::new(1024).try_reserve(4096).is_none());
    }
}
