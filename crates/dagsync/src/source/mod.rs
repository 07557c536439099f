//! Where DAGs come from: an S3 prefix, or a local folder for debugging.
//!
//! Both answer the same two questions: what is there ([`Source::list`], one
//! ListObjectsV2 pass over every page) and give me this exact version of one
//! object ([`Source::fetch`], streamed into a staging file, verified, fsynced).
//!
//! Rooms: [`object`] (the types every stage shares), [`list`], [`fetch`].

mod fetch;
mod list;
mod object;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use airside_core::aws;
use aws_smithy_runtime_api::client::http::SharedHttpConnector;

pub use fetch::{DEFAULT_MEMORY_BUDGET, DirectPath, MemoryBudget, Writes};
pub use object::{Fetched, RemoteObject, SourceError, Via};

use fetch::{Breaker, copy_local, fetch_direct, fetch_s3};
use list::{list_local, list_s3};

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
}
