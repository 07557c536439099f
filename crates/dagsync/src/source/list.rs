//! What is there: one ListObjectsV2 pass over every page of an S3 prefix, or a walk of a
//! local folder, as [`RemoteObject`]s.

use std::path::Path;
use std::time::UNIX_EPOCH;

use super::object::{RemoteObject, SourceError, local_etag, service_error, to_system_time};

pub(super) async fn list_s3(
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

pub(super) fn list_local(root: &Path) -> Result<Vec<RemoteObject>, SourceError> {
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
