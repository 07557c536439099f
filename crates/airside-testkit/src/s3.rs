//! S3 in moto, as the daemons' tests use it: a path-style client (for moto or a proxy in
//! front of it), fresh buckets, and objects put, deleted, listed and read. One copy for
//! dagsync's and logship's tests.

use aws_sdk_s3::primitives::ByteStream;
use futures::StreamExt;

use crate::{moto, unique_name};

/// An S3 client for moto.
pub async fn s3_client() -> aws_sdk_s3::Client {
    s3_client_at(&moto().endpoint()).await
}

/// An S3 client for `endpoint` (moto, or a proxy in front of it), path-style as the
/// daemons use it against a custom endpoint.
pub async fn s3_client_at(endpoint: &str) -> aws_sdk_s3::Client {
    let config = moto().sdk_config_for(endpoint).await;
    let conf = aws_sdk_s3::config::Builder::from(&config)
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// Creates a bucket named `<prefix>-<unique suffix>` and returns its name.
pub async fn create_bucket(s3: &aws_sdk_s3::Client, prefix: &str) -> String {
    let bucket = unique_name(prefix);
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    bucket
}

/// Puts one object.
pub async fn put_object(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    body: impl Into<Vec<u8>>,
) {
    s3.put_object()
        .bucket(bucket)
        .key(key)
        .body(ByteStream::from(body.into()))
        .send()
        .await
        .unwrap();
}

/// Puts many objects, 16 at a time.
pub async fn put_objects<'a>(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    objects: impl IntoIterator<Item = (&'a String, &'a Vec<u8>)>,
) {
    futures::stream::iter(objects)
        .for_each_concurrent(16, |(k, v)| put_object(s3, bucket, k, v.clone()))
        .await;
}

/// Deletes one object.
pub async fn delete_object(s3: &aws_sdk_s3::Client, bucket: &str, key: &str) {
    s3.delete_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap();
}

/// Every key under `prefix`, following every page.
pub async fn list_keys(s3: &aws_sdk_s3::Client, bucket: &str, prefix: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut pages = s3
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        for o in page.unwrap().contents() {
            keys.push(o.key().unwrap().to_string());
        }
    }
    keys
}

/// The body of one object.
pub async fn get_object(s3: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Vec<u8> {
    s3.get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap()
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes()
        .to_vec()
}
