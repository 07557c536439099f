//! Give me this exact version of one object: the direct GetObject path with its
//! breaker, the SDK path, a local copy; bodies verified ([`crate::verify`]) and written
//! to a staging file (in memory under a byte budget, or streamed).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use airside_core::aws::ErrorClass;
use aws_sdk_s3::primitives::ByteStream;
use aws_smithy_runtime_api::client::http::SharedHttpConnector;
use tokio::io::AsyncWriteExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::object::{RemoteObject, SourceError, local_etag, service_error};
use crate::direct::{Answer, DirectGet};
use crate::verify::{CHECKSUM_MODE, Check};

/// The direct GetObject path of an S3 source, prepared on first use.
#[derive(Debug)]
pub struct DirectPath {
    /// The same provider the S3 client was built with.
    pub(super) provider: Option<aws_credential_types::provider::SharedCredentialsProvider>,
    pub(super) connector: SharedHttpConnector,
    pub(super) body_timeout: Duration,
    /// `Some(None)` once it is known not to apply to this endpoint.
    pub(super) prepared: tokio::sync::OnceCell<Option<DirectGet>>,
    pub(super) breaker: std::sync::Mutex<Breaker>,
}

/// After this many direct attempts in a row fail, the direct path rests for
/// [`DIRECT_REST`]: a failure that repeats (a skewed clock, a proxy that rewrites requests)
/// would otherwise cost every object two requests.
pub(super) const DIRECT_TRIP_AFTER: u32 = 8;

/// How long the direct path rests once tripped.
pub(super) const DIRECT_REST: Duration = Duration::from_secs(300);

/// Consecutive direct failures, and until when the direct path rests.
#[derive(Debug, Default)]
pub(super) struct Breaker {
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
        crate::telemetry::direct_get_fell_back(key, why);
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
pub(super) async fn fetch_direct(
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
pub(super) enum ReadError {
    /// The transfer failed (dropped, stalled).
    Body(String),
    /// The bytes are not the listed object.
    Integrity(SourceError),
}

/// Reads a whole body into a buffer of the listed size (one copy), verifying it as
/// `check` says ([`crate::verify`]). `chunk_timeout` bounds the silence between chunks.
pub(super) async fn read_body(
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
pub(super) async fn write_in_memory(
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
pub(super) const IN_MEMORY_MAX: u64 = 8 * 1024 * 1024;

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
pub(super) fn write_staged(to: &Path, data: &[u8], mtime: SystemTime) -> Result<(), SourceError> {
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
pub(super) fn finish_staged(
    f: &std::fs::File,
    to: &Path,
    mtime: SystemTime,
) -> Result<(), SourceError> {
    f.set_modified(mtime).map_err(|e| SourceError::io(to, e))
}

pub(super) fn copy_local(from: &Path, obj: &RemoteObject, to: &Path) -> Result<u64, SourceError> {
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

/// The verification a GetObject answer of the SDK calls for (its checksum and encryption
/// headers, as the SDK parsed them).
pub(super) fn check_of(
    out: &aws_sdk_s3::operation::get_object::GetObjectOutput,
    etag: &str,
) -> Check {
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
pub(super) async fn fetch_s3(
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

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

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
