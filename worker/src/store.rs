//! Where the worker's files go and come from: `s3://bucket/prefix/` or a local directory (for
//! runs and tests off AWS). Small objects in one PUT; large files streamed in parts (S3's
//! multipart upload, a few parts at once) so that memory stays bounded whatever the file's size;
//! every file's SHA-256 taken from the same bytes that were sent, and sent with them (S3's
//! `x-amz-checksum-sha256`): S3 refuses bytes that do not match it and keeps it with the object,
//! so verify-completion can hold each object to its manifest without reading it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};
use base64::Engine as _;
use futures_util::stream::{FuturesOrdered, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A file larger than this is sent in parts of at least this size (S3's minimum part is 5 MiB).
pub const PART: u64 = 8 << 20;
/// S3 allows at most 10,000 parts: larger files get larger parts.
const MAX_PARTS: u64 = 10_000;
/// Parts in flight at once for one file: bounds memory to this many parts.
const PARTS_AT_ONCE: usize = 4;

/// Where objects go: `s3://bucket/prefix/` or a local directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    S3 { bucket: String, prefix: String },
    Dir(PathBuf),
}

impl Target {
    pub fn parse(s: &str) -> Result<Target> {
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                bail!("'{s}': no bucket; expected s3://bucket/prefix/ or a directory");
            }
            let mut prefix = prefix.to_string();
            if !prefix.is_empty() && !prefix.ends_with('/') {
                prefix.push('/');
            }
            return Ok(Target::S3 {
                bucket: bucket.to_string(),
                prefix,
            });
        }
        if s.is_empty() || s.contains("://") {
            bail!("'{s}': expected s3://bucket/prefix/ or a local directory");
        }
        Ok(Target::Dir(PathBuf::from(s)))
    }

    /// The key of `rel` (a '/'-separated name under the target) as it is listed and fetched.
    pub fn key(&self, rel: &str) -> String {
        match self {
            Target::S3 { prefix, .. } => format!("{prefix}{rel}"),
            Target::Dir(_) => rel.to_string(),
        }
    }

    /// Where `key` is, for the report: an s3:// URL or a path.
    pub fn url(&self, key: &str) -> String {
        match self {
            Target::S3 { bucket, .. } => format!("s3://{bucket}/{key}"),
            Target::Dir(d) => d.join(key).display().to_string(),
        }
    }

    /// The same place, one level down: `rel` is '/'-separated.
    pub fn under(&self, rel: &str) -> Target {
        let rel = rel.trim_matches('/');
        match self {
            Target::S3 { bucket, prefix } => Target::S3 {
                bucket: bucket.clone(),
                prefix: format!("{prefix}{rel}/"),
            },
            Target::Dir(d) => Target::Dir(d.join(rel)),
        }
    }
}

/// A file as it was stored or fetched: its size and the SHA-256 of its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub bytes: u64,
    /// Hex, of the whole file.
    pub sha256: String,
    /// As S3 keeps and reports it for this object ([`ephemera_contract::ManifestObject`]'s
    /// `checksum_sha256`): the base64 digest for one PUT, the composite `…-N` for N parts.
    pub checksum_sha256: String,
}

impl Stored {
    /// `bytes` sent whole (one PUT, or a file written to a directory).
    fn whole(bytes: &[u8]) -> Stored {
        let digest: [u8; 32] = Sha256::digest(bytes).into();
        Stored {
            bytes: bytes.len() as u64,
            sha256: hex::encode(digest),
            checksum_sha256: b64(&digest),
        }
    }
}

fn b64(digest: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(digest)
}

/// S3's composite SHA-256 of an object sent in parts, from the parts' raw digests in order: the
/// base64 digest of their concatenation, then `-<number of parts>`
/// (https://docs.aws.amazon.com/AmazonS3/latest/userguide/checking-object-integrity.html).
pub fn composite_sha256(part_digests: &[[u8; 32]]) -> String {
    let mut of_parts = Sha256::new();
    for d in part_digests {
        of_parts.update(d);
    }
    format!("{}-{}", b64(&of_parts.finalize()), part_digests.len())
}

/// Reads and writes objects of a target. S3 needs a client; a directory does not.
#[derive(Clone)]
pub struct Store {
    pub target: Target,
    s3: Option<aws_sdk_s3::Client>,
}

impl Store {
    pub async fn new(target: Target) -> Store {
        let s3 = match &target {
            Target::S3 { .. } => {
                // The run's session once the agent holds one (`agent::credentials`).
                let conf = crate::agent::credentials::sdk_config().await;
                // Against an emulator (a custom endpoint) buckets cannot be virtual hosts.
                let s3 = aws_sdk_s3::config::Builder::from(&conf)
                    .force_path_style(conf.endpoint_url().is_some())
                    .build();
                Some(aws_sdk_s3::Client::from_conf(s3))
            }
            Target::Dir(_) => None,
        };
        Store { target, s3 }
    }

    /// A store of `target` through `s3` (its credentials, its endpoint): tests sign as the
    /// worker role this way.
    pub fn with_s3(target: Target, s3: aws_sdk_s3::Client) -> Store {
        Store {
            target,
            s3: Some(s3),
        }
    }

    pub(crate) fn s3(&self) -> Result<(&aws_sdk_s3::Client, &str)> {
        match (&self.target, &self.s3) {
            (Target::S3 { bucket, .. }, Some(s3)) => Ok((s3, bucket)),
            _ => bail!("no S3 client for {:?}", self.target),
        }
    }

    /// Stores `bytes` under `key` (from [`Target::key`]). A file appears whole or not at all.
    pub async fn put(&self, key: &str, bytes: Vec<u8>, content_type: &str) -> Result<Stored> {
        let stored = Stored::whole(&bytes);
        if let Target::Dir(dir) = &self.target {
            write_atomically(&dir.join(key), &bytes)?;
            return Ok(stored);
        }
        let (s3, bucket) = self.s3()?;
        // The digest given, not left to the SDK: S3 checks the bytes against it and keeps it.
        s3.put_object()
            .bucket(bucket)
            .key(key)
            .content_type(content_type)
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .checksum_sha256(&stored.checksum_sha256)
            .body(bytes.into())
            .send()
            .await
            .with_context(|| format!("uploading s3://{bucket}/{key}"))?;
        Ok(stored)
    }

    /// Stores the file at `path` under `key`: whole up to [`PART`], in parts beyond, never more
    /// than a few parts in memory. The digest is of the bytes sent.
    pub async fn put_file(&self, key: &str, path: &Path) -> Result<Stored> {
        let mut file = tokio::fs::File::from_std(
            open_job_file(path).with_context(|| format!("reading {}", path.display()))?,
        );
        let size = file
            .metadata()
            .await
            .with_context(|| format!("reading {}", path.display()))?
            .len();
        if size <= PART || matches!(self.target, Target::Dir(_)) {
            let mut bytes = Vec::with_capacity(size as usize);
            file.read_to_end(&mut bytes)
                .await
                .with_context(|| format!("reading {}", path.display()))?;
            return self.put(key, bytes, "application/octet-stream").await;
        }
        let (s3, bucket) = self.s3()?;
        // Each part sent with its digest; S3 keeps their composite for the object.
        let upload = s3
            .create_multipart_upload()
            .bucket(bucket)
            .key(key)
            .content_type("application/octet-stream")
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .send()
            .await
            .with_context(|| format!("starting the upload of s3://{bucket}/{key}"))?;
        let id = upload
            .upload_id()
            .context("S3 returned no upload id")?
            .to_string();
        let sent = self.send_parts(key, &id, file, part_size(size)).await;
        let (parts, stored) = match sent {
            Ok(done) => done,
            Err(e) => {
                // An unfinished upload's parts are billed until aborted.
                let _ = s3
                    .abort_multipart_upload()
                    .bucket(bucket)
                    .key(key)
                    .upload_id(&id)
                    .send()
                    .await;
                return Err(e);
            }
        };
        s3.complete_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(&id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .with_context(|| format!("completing the upload of s3://{bucket}/{key}"))?;
        Ok(stored)
    }

    /// The parts of one multipart upload, read in order (so hashed in order) and sent a few at
    /// once.
    async fn send_parts(
        &self,
        key: &str,
        id: &str,
        mut file: tokio::fs::File,
        part: u64,
    ) -> Result<(Vec<CompletedPart>, Stored)> {
        let (s3, bucket) = self.s3()?;
        let mut hasher = Sha256::new();
        let (mut total, mut number) = (0u64, 0i32);
        let mut in_flight = FuturesOrdered::new();
        let mut parts = vec![];
        let mut digests: Vec<[u8; 32]> = vec![];
        loop {
            let mut buf = Vec::with_capacity(part as usize);
            (&mut file).take(part).read_to_end(&mut buf).await?;
            if buf.is_empty() {
                break;
            }
            hasher.update(&buf);
            let digest: [u8; 32] = Sha256::digest(&buf).into();
            let part_checksum = b64(&digest);
            digests.push(digest);
            total += buf.len() as u64;
            number += 1;
            if in_flight.len() == PARTS_AT_ONCE {
                if let Some(done) = in_flight.next().await {
                    parts.push(done?);
                }
            }
            let request = s3
                .upload_part()
                .bucket(bucket)
                .key(key)
                .upload_id(id)
                .part_number(number)
                .checksum_algorithm(ChecksumAlgorithm::Sha256)
                .checksum_sha256(&part_checksum)
                .body(ByteStream::from(buf));
            in_flight.push_back(async move {
                let sent = request
                    .send()
                    .await
                    .with_context(|| format!("uploading part {number} of s3://{bucket}/{key}"))?;
                anyhow::Ok(
                    CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(sent.e_tag().map(String::from))
                        .checksum_sha256(part_checksum)
                        .build(),
                )
            });
        }
        while let Some(done) = in_flight.next().await {
            parts.push(done?);
        }
        let stored = Stored {
            bytes: total,
            sha256: hex::encode(hasher.finalize()),
            checksum_sha256: composite_sha256(&digests),
        };
        Ok((parts, stored))
    }

    /// The object `key` written to `path` (whole or not at all); `None` when there is none.
    pub async fn get_file(&self, key: &str, path: &Path) -> Result<Option<Stored>> {
        let partial = partial_of(path);
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        let stored = match &self.target {
            Target::Dir(dir) => {
                let from = dir.join(key);
                let bytes = match tokio::fs::read(&from).await {
                    Ok(b) => b,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(e).with_context(|| format!("reading {}", from.display())),
                };
                let mut out = new_partial(&partial).await?;
                out.write_all(&bytes).await?;
                out.flush().await?;
                Stored::whole(&bytes)
            }
            Target::S3 { .. } => {
                let (s3, bucket) = self.s3()?;
                let got = s3.get_object().bucket(bucket).key(key).send().await;
                let mut body = match got {
                    Ok(o) => o.body,
                    Err(e) if e.as_service_error().is_some_and(|e| e.is_no_such_key()) => {
                        return Ok(None)
                    }
                    Err(e) => {
                        return Err(e).with_context(|| format!("fetching s3://{bucket}/{key}"))
                    }
                };
                let mut out = new_partial(&partial).await?;
                let (mut hasher, mut total) = (Sha256::new(), 0u64);
                while let Some(chunk) = body
                    .try_next()
                    .await
                    .with_context(|| format!("fetching s3://{bucket}/{key}"))?
                {
                    hasher.update(&chunk);
                    total += chunk.len() as u64;
                    out.write_all(&chunk).await?;
                }
                out.flush().await?;
                let digest: [u8; 32] = hasher.finalize().into();
                // What was read, digested whole (the form of an object sent in one PUT).
                Stored {
                    bytes: total,
                    sha256: hex::encode(digest),
                    checksum_sha256: b64(&digest),
                }
            }
        };
        tokio::fs::rename(&partial, path)
            .await
            .with_context(|| format!("renaming to {}", path.display()))?;
        Ok(Some(stored))
    }

    /// Every object under the target, by its name relative to the target, in order.
    pub async fn list(&self) -> Result<Vec<String>> {
        match &self.target {
            Target::Dir(dir) if !dir.exists() => Ok(vec![]),
            Target::Dir(dir) => Ok(files(dir)?.into_iter().map(|(rel, _)| rel).collect()),
            Target::S3 { prefix, .. } => {
                let (s3, bucket) = self.s3()?;
                let mut pages = s3
                    .list_objects_v2()
                    .bucket(bucket)
                    .prefix(prefix)
                    .into_paginator()
                    .send();
                let mut out = vec![];
                while let Some(page) = pages.next().await {
                    let page = page.with_context(|| format!("listing s3://{bucket}/{prefix}"))?;
                    out.extend(page.contents().iter().filter_map(|o| {
                        o.key()
                            .and_then(|k| k.strip_prefix(prefix.as_str()))
                            .filter(|rel| !rel.is_empty() && !rel.ends_with('/'))
                            .map(String::from)
                    }));
                }
                out.sort();
                Ok(out)
            }
        }
    }

    /// Whether the object `key` is listed: a ListObjectsV2 with the key itself as the prefix,
    /// which a session that may list only under its own prefix may make.
    async fn listed(&self, key: &str) -> Result<bool> {
        let (s3, bucket) = self.s3()?;
        let page = s3
            .list_objects_v2()
            .bucket(bucket)
            .prefix(key)
            .max_keys(1)
            .send()
            .await
            .with_context(|| format!("listing s3://{bucket}/{key}"))?;
        Ok(page.contents().iter().any(|o| o.key() == Some(key)))
    }

    /// Removes the object `key`; one that is not there is not an error.
    pub async fn delete(&self, key: &str) -> Result<()> {
        if let Target::Dir(dir) = &self.target {
            return match std::fs::remove_file(dir.join(key)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
                _ => Ok(()),
            };
        }
        let (s3, bucket) = self.s3()?;
        s3.delete_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .with_context(|| format!("deleting s3://{bucket}/{key}"))?;
        Ok(())
    }
}

/// What a conditional write expects to replace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect<'a> {
    /// No object under the key (S3 `If-None-Match: *`).
    Absent,
    /// The object whose ETag this is (S3 `If-Match`).
    Tagged(&'a str),
}

/// How a conditional write went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Swap {
    /// Written; the new object's ETag.
    Written(String),
    /// Someone else's write came first: the object is not what was expected.
    Lost,
}

/// A lock file older than this was left by a process that died holding it: the swap it
/// guards takes microseconds.
const STALE_LOCK: std::time::Duration = std::time::Duration::from_secs(30);

impl Store {
    /// The object `key` with its ETag (S3's; a directory's is the SHA-256 of its bytes), for a
    /// small object read whole; `None` when there is none.
    pub async fn get_tagged(&self, key: &str) -> Result<Option<(Vec<u8>, String)>> {
        if let Target::Dir(dir) = &self.target {
            let path = dir.join(key);
            return match tokio::fs::read(&path).await {
                Ok(b) => {
                    let tag = sha256_hex(&b);
                    Ok(Some((b, tag)))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
            };
        }
        let (s3, bucket) = self.s3()?;
        // Listed first: a run's session may list only under its run's prefix, and to a caller
        // who may not list the whole bucket S3 answers a GetObject of a missing key 403
        // AccessDenied, not 404 NoSuchKey (S3 API reference, GetObject, "Permissions": "If you
        // don't have the s3:ListBucket permission, Amazon S3 returns an HTTP status code 403"),
        // so "none yet" (a first attempt's checkpoint list) is told by the listing.
        if !self.listed(key).await? {
            return Ok(None);
        }
        let got = match s3.get_object().bucket(bucket).key(key).send().await {
            Ok(o) => o,
            Err(e) if e.as_service_error().is_some_and(|e| e.is_no_such_key()) => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("fetching s3://{bucket}/{key}")),
        };
        let tag = got
            .e_tag()
            .with_context(|| format!("s3://{bucket}/{key} came without an ETag"))?
            .to_string();
        let bytes = got
            .body
            .collect()
            .await
            .with_context(|| format!("fetching s3://{bucket}/{key}"))?
            .into_bytes()
            .to_vec();
        Ok(Some((bytes, tag)))
    }

    /// Stores `bytes` under `key` only if the object there is still what `expect` says: a
    /// compare-and-swap. On S3 a conditional PutObject: 412 PreconditionFailed when the object
    /// is not the expected one, 409 ConditionalRequestConflict when another write to the key
    /// raced this one, and 404 NoSuchKey for `If-Match` on a key that is gone; each is
    /// [`Swap::Lost`] (https://docs.aws.amazon.com/AmazonS3/latest/userguide/conditional-writes.html).
    /// In a directory the same under a lock file, the write itself by rename.
    pub async fn put_if(
        &self,
        key: &str,
        bytes: Vec<u8>,
        content_type: &str,
        expect: Expect<'_>,
    ) -> Result<Swap> {
        if let Target::Dir(dir) = &self.target {
            return swap_in_dir(&dir.join(key), &bytes, expect).await;
        }
        let (s3, bucket) = self.s3()?;
        let mut put = s3
            .put_object()
            .bucket(bucket)
            .key(key)
            .content_type(content_type)
            .body(bytes.into());
        put = match expect {
            Expect::Absent => put.if_none_match("*"),
            Expect::Tagged(tag) => put.if_match(tag),
        };
        match put.send().await {
            Ok(out) => Ok(Swap::Written(
                out.e_tag()
                    .with_context(|| format!("s3://{bucket}/{key} was written without an ETag"))?
                    .to_string(),
            )),
            Err(e) if lost_race(&e) => Ok(Swap::Lost),
            Err(e) => Err(e).with_context(|| format!("uploading s3://{bucket}/{key}")),
        }
    }

    /// Aborts every unfinished multipart upload under the target (a save cut by a reclaim
    /// leaves one, billed until aborted); how many.
    pub async fn abort_uploads(&self) -> Result<usize> {
        let Target::S3 { prefix, .. } = &self.target else {
            return Ok(0);
        };
        let (s3, bucket) = self.s3()?;
        let (mut key_marker, mut id_marker) = (None::<String>, None::<String>);
        let mut aborted = 0;
        loop {
            let page = s3
                .list_multipart_uploads()
                .bucket(bucket)
                .prefix(prefix)
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(id_marker.take())
                .send()
                .await
                .with_context(|| format!("listing the uploads under s3://{bucket}/{prefix}"))?;
            for u in page.uploads() {
                let (Some(key), Some(id)) = (u.key(), u.upload_id()) else {
                    continue;
                };
                s3.abort_multipart_upload()
                    .bucket(bucket)
                    .key(key)
                    .upload_id(id)
                    .send()
                    .await
                    .with_context(|| format!("aborting the upload of s3://{bucket}/{key}"))?;
                aborted += 1;
            }
            if page.is_truncated() != Some(true) {
                return Ok(aborted);
            }
            key_marker = page.next_key_marker().map(String::from);
            id_marker = page.next_upload_id_marker().map(String::from);
        }
    }
}

/// Whether a conditional PutObject failed because the object was not the expected one.
fn lost_race<E: aws_sdk_s3::error::ProvideErrorMetadata, R>(
    e: &aws_sdk_s3::error::SdkError<E, R>,
) -> bool {
    e.as_service_error().is_some_and(|s| {
        matches!(
            s.code(),
            Some("PreconditionFailed" | "ConditionalRequestConflict" | "NoSuchKey")
        )
    })
}

/// The directory's compare-and-swap: the lock file (created exclusively) makes the read, the
/// comparison and the rename one step for every process that takes it.
async fn swap_in_dir(path: &Path, bytes: &[u8], expect: Expect<'_>) -> Result<Swap> {
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    // `.ephemera-partial`: never listed as an object of the store.
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".lock.ephemera-partial");
    let lock = path.with_file_name(name);
    loop {
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&lock)
        {
            Ok(_) => break,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let stale = std::fs::metadata(&lock)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > STALE_LOCK);
                if stale {
                    let _ = std::fs::remove_file(&lock);
                } else {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
            }
            Err(e) => return Err(e).with_context(|| format!("creating {}", lock.display())),
        }
    }
    let swapped = (|| {
        let now = match std::fs::read(path) {
            Ok(b) => Some(sha256_hex(&b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let expected = match expect {
            Expect::Absent => now.is_none(),
            Expect::Tagged(tag) => now.as_deref() == Some(tag),
        };
        if !expected {
            return Ok(Swap::Lost);
        }
        write_atomically(path, bytes)?;
        Ok(Swap::Written(sha256_hex(bytes)))
    })();
    let _ = std::fs::remove_file(&lock);
    swapped
}

/// Parts of at least [`PART`], large enough that the file fits in [`MAX_PARTS`].
fn part_size(size: u64) -> u64 {
    let mib = 1 << 20;
    PART.max(size.div_ceil(MAX_PARTS).div_ceil(mib) * mib)
}

/// Where a file is written before it is renamed into place.
fn partial_of(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".ephemera-partial");
    path.with_file_name(name)
}

pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let tmp = partial_of(path);
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// A fresh file at `partial` to download into: whatever is there (a leftover, or a link a job
/// planted) is removed first, and the file is created new without following a link, so root
/// never writes through one.
async fn new_partial(partial: &Path) -> Result<tokio::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::remove_file(partial) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", partial.display())),
    }
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(partial)
        .with_context(|| format!("writing {}", partial.display()))?;
    Ok(tokio::fs::File::from_std(f))
}

/// The user whose files the agent reads back from a job's directories (`exec --run-as`): set
/// once, before the job starts; one job a worker process.
static JOB_OWNER: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

/// From now on, a file stored from disk ([`Store::put_file`]: a checkpoint's, an output) must be
/// a regular file `uid` owns. The job's directories are handed to it before it starts, so every
/// file it made or was given is; a link or a directory it swapped for one cannot make the agent
/// (root) copy another user's file into the run's objects.
pub fn reading_files_of(uid: u32) {
    if JOB_OWNER.set(uid).is_err() && JOB_OWNER.get() != Some(&uid) {
        tracing::warn!(uid, "the job's user was already set; the first one stays");
    }
}

/// `path` opened for reading without following a link at its end, and, once a job's user is
/// set ([`reading_files_of`]), refused unless it is a regular file of that user's.
fn open_job_file(path: &Path) -> Result<std::fs::File> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        bail!("not a regular file");
    }
    if let Some(&uid) = JOB_OWNER.get() {
        if meta.uid() != uid {
            bail!(
                "owned by uid {}, not the job's user ({uid}): not the job's file",
                meta.uid()
            );
        }
    }
    Ok(file)
}

/// Every regular file under `dir`, by its path relative to `dir` ('/'-separated), in order;
/// files still being written by the store (`*.ephemera-partial`) are not listed.
pub fn files(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out = vec![];
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let entry = entry?;
            let path = entry.path();
            let kind = entry.file_type()?;
            if kind.is_dir() {
                pending.push(path);
            } else if kind.is_file() && !path.to_string_lossy().ends_with(".ephemera-partial") {
                let rel = path
                    .strip_prefix(dir)
                    .unwrap_or(&path)
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/");
                out.push((rel, path));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// A relative name from a listing or a manifest as a path under `dir`, refusing any that would
/// leave it (`..`, an absolute path): an object's key is not trusted to name a place.
pub fn path_under(dir: &Path, rel: &str) -> Result<PathBuf> {
    let mut path = dir.to_path_buf();
    for part in rel.split('/') {
        match part {
            "" | "." => {}
            ".." => bail!("'{rel}' leaves {}", dir.display()),
            p if p.contains('\\') || p.contains('\0') => bail!("'{rel}' is not a plain name"),
            p => path.push(p),
        }
    }
    anyhow::ensure!(path != dir, "'{rel}' names no file");
    Ok(path)
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// `bucket` in the harness's S3 for a test: made in `region`, or already there (bucket names
/// are the account's across regions, and another test may have made it).
#[cfg(test)]
pub(crate) async fn test_bucket(admin: &aws_sdk_s3::Client, region: &str, bucket: &str) {
    let mut create = admin.create_bucket().bucket(bucket);
    if region != "us-east-1" {
        create = create.create_bucket_configuration(
            aws_sdk_s3::types::CreateBucketConfiguration::builder()
                .location_constraint(aws_sdk_s3::types::BucketLocationConstraint::from(region))
                .build(),
        );
    }
    if let Err(e) = create.send().await {
        let owned = e
            .as_service_error()
            .is_some_and(|s| s.is_bucket_already_owned_by_you() || s.is_bucket_already_exists());
        assert!(owned, "CreateBucket: {e:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(
            Target::parse("s3://b/runs/r1").unwrap(),
            Target::S3 {
                bucket: "b".into(),
                prefix: "runs/r1/".into()
            }
        );
        let t = Target::parse("s3://b").unwrap();
        assert_eq!(t.key("m.json"), "m.json");
        assert_eq!(t.url("m.json"), "s3://b/m.json");
        assert_eq!(
            t.under("/r1/worker-2/"),
            Target::S3 {
                bucket: "b".into(),
                prefix: "r1/worker-2/".into()
            }
        );
        assert!(Target::parse("s3:///x")
            .unwrap_err()
            .to_string()
            .contains("no bucket"));
        assert!(Target::parse("gs://b/x").is_err());
        assert_eq!(Target::parse("out").unwrap(), Target::Dir("out".into()));
    }

    #[test]
    fn parts_grow_only_for_files_past_ten_thousand_parts() {
        assert_eq!(part_size(1), PART);
        assert_eq!(part_size(PART * MAX_PARTS), PART);
        let big = PART * MAX_PARTS + 1;
        assert!(part_size(big) > PART);
        assert!(big.div_ceil(part_size(big)) <= MAX_PARTS);
        assert_eq!(part_size(big) % (1 << 20), 0);
    }

    #[test]
    fn a_name_that_would_leave_the_directory_is_refused() {
        let d = Path::new("/w");
        assert_eq!(path_under(d, "a/b.txt").unwrap(), Path::new("/w/a/b.txt"));
        assert_eq!(path_under(d, "/a//b").unwrap(), Path::new("/w/a/b"));
        assert!(path_under(d, "a/../../etc/passwd").is_err());
        assert!(path_under(d, "").is_err());
    }

    #[tokio::test]
    async fn a_directory_store_round_trips_files_and_lists_them() {
        let base = std::env::temp_dir().join(format!("ephemera-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        let src = base.join("src.bin");
        std::fs::write(&src, b"hello").unwrap();
        let store = Store::new(Target::Dir(base.join("to"))).await;
        let put = store.put_file("a/b.bin", &src).await.unwrap();
        assert_eq!(put.bytes, 5);
        assert_eq!(put.sha256, sha256_hex(b"hello"));
        assert_eq!(store.list().await.unwrap(), ["a/b.bin"]);
        let got = store
            .get_file("a/b.bin", &base.join("back/b.bin"))
            .await
            .unwrap();
        assert_eq!(got, Some(put));
        assert_eq!(std::fs::read(base.join("back/b.bin")).unwrap(), b"hello");
        assert_eq!(store.get_file("nope", &base.join("x")).await.unwrap(), None);
        store.delete("a/b.bin").await.unwrap();
        store.delete("a/b.bin").await.unwrap();
        assert!(store.list().await.unwrap().is_empty());
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_directory_swaps_an_object_only_if_it_is_still_the_one_expected() {
        let base = std::env::temp_dir().join(format!("ephemera-swap-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let store = Store::new(Target::Dir(base.clone())).await;
        let put = |b: &[u8], e: Expect<'_>| {
            let (store, b) = (store.clone(), b.to_vec());
            let e = match e {
                Expect::Absent => None,
                Expect::Tagged(t) => Some(t.to_string()),
            };
            async move {
                let e = e.as_deref().map_or(Expect::Absent, Expect::Tagged);
                store.put_if("l.json", b, "", e).await.unwrap()
            }
        };
        let Swap::Written(one) = put(b"1", Expect::Absent).await else {
            panic!("nothing was there")
        };
        assert_eq!(put(b"x", Expect::Absent).await, Swap::Lost);
        assert_eq!(put(b"x", Expect::Tagged("other")).await, Swap::Lost);
        let Swap::Written(two) = put(b"2", Expect::Tagged(&one)).await else {
            panic!("it was still the first")
        };
        // The first writer's tag no longer swaps it.
        assert_eq!(put(b"y", Expect::Tagged(&one)).await, Swap::Lost);
        assert_eq!(
            store.get_tagged("l.json").await.unwrap(),
            Some((b"2".to_vec(), two.clone()))
        );
        // The lock is never listed, and is gone once the swap is done.
        assert_eq!(store.list().await.unwrap(), ["l.json"]);
        // Many writers at once, each from the tag it read: exactly one of them wins.
        let tries = (0..8u8).map(|i| tokio::spawn(put(&[b'a' + i], Expect::Tagged(&two))));
        let won = futures_util::future::join_all(tries)
            .await
            .into_iter()
            .filter(|r| matches!(r, Ok(Swap::Written(_))))
            .count();
        assert_eq!(won, 1);
        std::fs::remove_dir_all(&base).unwrap();
    }
}
