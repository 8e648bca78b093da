//! S3: the export manifest and the sizes and SHA-256 of the objects it lists; the run report's
//! copies.

use std::collections::BTreeMap;
use std::future::Future;

use aws_sdk_s3::types::ChecksumMode;
use futures_util::stream::{self, StreamExt, TryStreamExt};

use crate::error::AwsError;

pub trait Objects: Send + Sync {
    fn get(
        &self,
        bucket: &str,
        key: &str,
    ) -> impl Future<Output = Result<Option<Vec<u8>>, AwsError>> + Send;
    /// Every object under `prefix` with its size: one ListObjectsV2 page per 1,000 objects,
    /// where a HeadObject per object would take a call each.
    fn sizes_under(
        &self,
        bucket: &str,
        prefix: &str,
    ) -> impl Future<Output = Result<std::collections::BTreeMap<String, u64>, AwsError>> + Send;
    /// Size in bytes, or None when absent.
    fn size(
        &self,
        bucket: &str,
        key: &str,
    ) -> impl Future<Output = Result<Option<u64>, AwsError>> + Send;
    /// The SHA-256 S3 keeps for each of `keys` that exists (`ChecksumSHA256`, None when it keeps
    /// none); absent objects are left out.
    fn checksums(
        &self,
        bucket: &str,
        keys: &[String],
    ) -> impl Future<Output = Result<BTreeMap<String, Option<String>>, AwsError>> + Send;
}

/// HEADs in flight at once: ListObjectsV2 names an object's checksum algorithm, not its value,
/// so each object is asked for; a few dozen at once read thousands within the timeout.
const HEADS_AT_ONCE: usize = 32;

impl Objects for aws_sdk_s3::Client {
    async fn get(&self, bucket: &str, key: &str) -> Result<Option<Vec<u8>>, AwsError> {
        match self.get_object().bucket(bucket).key(key).send().await {
            Ok(r) => {
                let bytes = r.body.collect().await.map_err(|e| AwsError::Call {
                    service: "s3",
                    operation: "GetObject",
                    code: "ReadBody".into(),
                    message: e.to_string(),
                })?;
                Ok(Some(bytes.into_bytes().to_vec()))
            }
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
            Err(e) => Err(AwsError::sdk("s3", "GetObject", e)),
        }
    }

    async fn sizes_under(
        &self,
        bucket: &str,
        prefix: &str,
    ) -> Result<std::collections::BTreeMap<String, u64>, AwsError> {
        let mut out = std::collections::BTreeMap::new();
        let mut pages = self
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| AwsError::sdk("s3", "ListObjectsV2", e))?;
            for o in page.contents() {
                if let Some(k) = o.key() {
                    out.insert(k.to_string(), o.size().unwrap_or(0).max(0) as u64);
                }
            }
        }
        Ok(out)
    }

    async fn size(&self, bucket: &str, key: &str) -> Result<Option<u64>, AwsError> {
        match self.head_object().bucket(bucket).key(key).send().await {
            Ok(r) => Ok(Some(r.content_length().unwrap_or(0).max(0) as u64)),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
            Err(e) => Err(AwsError::sdk("s3", "HeadObject", e)),
        }
    }

    async fn checksums(
        &self,
        bucket: &str,
        keys: &[String],
    ) -> Result<BTreeMap<String, Option<String>>, AwsError> {
        // Owned per request: a future borrowing the keys is not `Send` for every lifetime.
        let kept: Vec<Option<(String, Option<String>)>> = stream::iter(keys.to_vec())
            .map(|key| {
                let (s3, bucket) = (self.clone(), bucket.to_string());
                async move {
                    let head = s3
                        .head_object()
                        .bucket(bucket)
                        .key(&key)
                        .checksum_mode(ChecksumMode::Enabled)
                        .send()
                        .await;
                    match head {
                        Ok(r) => Ok(Some((key, r.checksum_sha256().map(String::from)))),
                        Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => {
                            Ok(None)
                        }
                        Err(e) => Err(AwsError::sdk("s3", "HeadObject", e)),
                    }
                }
            })
            .buffer_unordered(HEADS_AT_ONCE)
            .try_collect()
            .await?;
        Ok(kept.into_iter().flatten().collect())
    }
}

/// Writes one object: the cost report's HTML and JSON beside the run's output.
pub trait ObjectWriter: Send + Sync {
    fn put(
        &self,
        bucket: &str,
        key: &str,
        body: Vec<u8>,
        content_type: &str,
    ) -> impl Future<Output = Result<(), AwsError>> + Send;
}

impl ObjectWriter for aws_sdk_s3::Client {
    async fn put(
        &self,
        bucket: &str,
        key: &str,
        body: Vec<u8>,
        content_type: &str,
    ) -> Result<(), AwsError> {
        self.put_object()
            .bucket(bucket)
            .key(key)
            .content_type(content_type)
            .body(body.into())
            .send()
            .await
            .map_err(|e| AwsError::sdk("s3", "PutObject", e))?;
        Ok(())
    }
}
