//! What a source hands the rest of dagsync: one listed object ([`RemoteObject`]), one
//! fetched object ([`Fetched`], [`Via`]) and the failures of either ([`SourceError`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use airside_core::aws::{self, ErrorClass};

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

    pub(super) fn io(path: &Path, source: std::io::Error) -> Self {
        SourceError::Io {
            path: path.to_path_buf(),
            source,
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

/// How an object was fetched (the `via` label of `dagsync_objects_sent_total`).
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

pub(super) fn service_error<E>(
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

pub(super) fn to_system_time(dt: &aws_smithy_types::DateTime) -> SystemTime {
    let secs = dt.secs();
    if secs < 0 {
        return UNIX_EPOCH;
    }
    UNIX_EPOCH + Duration::new(secs as u64, dt.subsec_nanos())
}

fn mtime_nanos(meta: &std::fs::Metadata) -> u128 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos())
}

/// A local file's identity: size and mtime (a local source has no ETag).
pub(super) fn local_etag(meta: &std::fs::Metadata) -> String {
    format!("local-{:x}-{:x}", meta.len(), mtime_nanos(meta))
}
