//! Where a sync reads from: an S3 prefix (`s3://bucket/prefix/`) or, for a local VM, a
//! directory (`file:///srv/fixtures/config/`).
//!
//! S3: one ListObjectsV2 pass (paginated) gives every key with its ETag and size; no HEAD
//! per object. A download is a GET with `If-Match: <listed ETag>` and
//! `x-amz-checksum-mode: ENABLED`, streamed to disk in chunks (memory does not grow with
//! object size). Its size is always checked, and then the strongest check the object
//! allows: S3's full-object checksum (CRC64NVME, CRC32C, CRC32, SHA-1 or SHA-256, which
//! the SDK computes over the body as it streams and compares at its end), else the MD5 of
//! a single-part ETag (a multipart `…-N` is not one, nor is the ETag of an SSE-KMS or
//! SSE-C object), else the size alone. A composite checksum of a multipart upload
//! (`…-N`) covers parts, not the object, and is not checked. An object replaced between
//! LIST and GET answers 412 (or,
//! from a server that ignores If-Match, another ETag) and is reported as
//! [`SourceError::Changed`], so the caller can list again.
//!
//! Some S3-compatible servers (s3s-fs) list no ETags. Then an object's version is its
//! listed LastModified, as `aws s3 sync` compares, and a GET whose Last-Modified differs
//! is the change; the MD5 comes from the GET's own ETag. Coarser than an ETag: a rewrite
//! of the same size within the listing's time resolution (moto's: one second) is missed.
//!
//! Directories: an object's version is the file's mtime and size, and a file whose mtime
//! or size moves while it is copied is reported as changed the same way. Symlinks in the
//! source are not followed.
//!
//! Bundles ([`Bundle`]): one archive object (or file), fetched with one conditional GET
//! (`If-None-Match: <the ETag unpacked last>`: a 304 costs no body) and verified as above
//! while it streams, plus an optional pinned SHA-256.
//!
//! A bundle larger than [`Parts::above`] (and than one part) comes in byte ranges, several
//! at once, as aws-cli, s5cmd and the CRT fetch large objects: S3 serves each connection
//! at about 90 MB/s and scales with connections. The first GET's answer (the same request
//! as above, so a 304 still costs one request) gives the ETag, the size and the checksum;
//! its body serves the first part and is then dropped. Every other part is a GET of
//! `Range: bytes=A-B` with `If-Match: <that ETag>`, so all parts are of one version (a 412
//! is [`SourceError::Changed`], as for a prefix). At most [`Parts::in_flight`] parts are
//! downloading or waiting at once, each held whole in memory until its turn; they are
//! handed on in order, so the archive still streams into the unpacker and is hashed in
//! order. The body's memory is at most `in_flight × size` (64 MiB by default) plus the
//! chunks in the unpacker's channel. A part that fails is fetched again on its own under
//! the retry policy ([`retry::BACKOFF`]) until the pass's deadline. The whole object is
//! verified as a single GET is: S3 answers no checksum to a ranged GET, so the full-object
//! checksum of the first answer is computed here over the parts in order (where S3 has
//! only a composite checksum, as for one GET, the size and the pin are what is checked).

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use aws_sdk_s3::Client;
use aws_sdk_s3::types::ServerSideEncryption;
use aws_smithy_types::error::display::DisplayErrorContext;

use crate::aws::{self, Kind};
use crate::base::retry::{self, Deadline};
use crate::sync::archive::Format;
use crate::sync::fsat;
use aws_sdk_s3::operation::get_object::GetObjectOutput;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumMode, ChecksumType};
use aws_smithy_checksums::ChecksumAlgorithm;
use aws_smithy_checksums::http::HttpChecksum;
use bytes::Bytes;
use md5::{Digest, Md5};
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One object as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    pub key: String,
    pub version: Version,
    pub size: u64,
}

/// What tells one version of an object from the next, as listed. The manifest keeps its
/// [`Version::token`]: an object whose token and size are unchanged is not fetched again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Version {
    /// The listed ETag (quoted, as S3 sends it): a new upload changes it.
    ETag(String),
    /// The listed LastModified, from a server that lists no ETag.
    Modified(aws_smithy_types::DateTime),
    /// A file of a directory source: its mtime and size.
    File(String),
}

impl Version {
    /// The manifest's form. An ETag is kept as listed, so manifests written before the
    /// other forms existed still match.
    pub fn token(&self) -> String {
        match self {
            Version::ETag(etag) => etag.clone(),
            Version::Modified(t) => format!("modified-{}.{:09}", t.secs(), t.subsec_nanos()),
            Version::File(token) => token.clone(),
        }
    }

    fn etag(&self) -> Option<&str> {
        match self {
            Version::ETag(etag) => Some(etag),
            Version::Modified(_) | Version::File(_) => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(
        "{0}: expected s3://BUCKET/PREFIX/, s3://BUCKET/KEY.tar[.gz|.zst], or the same as file:///ABSOLUTE/PATH"
    )]
    BadUrl(String),
    /// A URL of the wrong shape for what it names, with what to write instead.
    #[error("{url}: {why}")]
    Shape { url: String, why: String },
    /// A `file://` directory that does not exist.
    #[error("{url}: no such directory ({why})")]
    NoDirectory { url: String, why: String },
    #[error("{url}: access refused: {why}")]
    Refused { url: String, why: String },
    #[error("{url}: {why}")]
    Failed { url: String, why: String },
    /// S3 asked us to slow down (503 SlowDown, 429): try again later, however often.
    #[error("{url}: {why}")]
    Throttled { url: String, why: String },
    #[error("{key}: changed while it was being synced")]
    Changed { key: String },
    #[error("{key}: verification failed: {why}")]
    Corrupt { key: String, why: String },
    #[error("{}: {source}", path.display())]
    Local { path: PathBuf, source: io::Error },
}

pub enum Source {
    S3 {
        client: Client,
        bucket: String,
        prefix: String,
    },
    Dir {
        root: PathBuf,
    },
}

/// A source URL split into its parts; the prefix always ends in `/` unless empty. A URL
/// whose last segment ends in `.tar`, `.tar.gz`, `.tgz` or `.tar.zst` (and not in `/`)
/// names one archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    S3 {
        bucket: String,
        prefix: String,
    },
    Dir {
        root: PathBuf,
    },
    S3Archive {
        bucket: String,
        key: String,
        format: Format,
    },
    FileArchive {
        path: PathBuf,
        format: Format,
    },
}

impl Location {
    pub fn parse(url: &str) -> Result<Location, SourceError> {
        let bad = || SourceError::BadUrl(url.to_string());
        // `…/app.tar.zst/`: a prefix or directory by its `/`, an archive by its name.
        if let Some(name) = Some(url.trim_end_matches('/'))
            .filter(|u| u.len() < url.len())
            .and_then(|u| u.rsplit('/').next())
            .filter(|name| Format::of(name).is_some())
        {
            let what = match url.starts_with("s3://") {
                true => "a prefix",
                false => "a directory",
            };
            return Err(SourceError::Shape {
                url: url.to_string(),
                why: format!(
                    "ends in / ({what}), but {name} is an archive's name: write {}",
                    url.trim_end_matches('/')
                ),
            });
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(bad());
            }
            if let Some(format) = Format::of(prefix) {
                return Ok(Location::S3Archive {
                    bucket: bucket.into(),
                    key: prefix.into(),
                    format,
                });
            }
            let mut prefix = prefix.to_string();
            if !prefix.is_empty() && !prefix.ends_with('/') {
                prefix.push('/');
            }
            Ok(Location::S3 {
                bucket: bucket.into(),
                prefix,
            })
        } else if let Some(path) = url.strip_prefix("file://") {
            let root = PathBuf::from(path);
            if !root.is_absolute() {
                return Err(bad());
            }
            if let Some(format) = Format::of(path) {
                return Ok(Location::FileArchive { path: root, format });
            }
            Ok(Location::Dir { root })
        } else {
            Err(bad())
        }
    }
}

impl Source {
    pub fn url(&self) -> String {
        match self {
            Source::S3 { bucket, prefix, .. } => format!("s3://{bucket}/{prefix}"),
            Source::Dir { root } => format!("file://{}", root.display()),
        }
    }

    /// The key with the source prefix removed.
    pub fn rest<'a>(&self, key: &'a str) -> &'a str {
        match self {
            Source::S3 { prefix, .. } => key.strip_prefix(prefix.as_str()).unwrap_or(key),
            Source::Dir { .. } => key,
        }
    }

    /// Every object, and how many list requests it took.
    pub async fn list(&self) -> Result<(Vec<Object>, u32), SourceError> {
        match self {
            Source::S3 {
                client,
                bucket,
                prefix,
            } => {
                // URL-encoded keys, as the aws CLI asks for them: a key may hold characters
                // XML 1.0 cannot carry, and those must reach keys.rs to be refused by name.
                let mut pages = client
                    .list_objects_v2()
                    .bucket(bucket)
                    .prefix(prefix)
                    .encoding_type(aws_sdk_s3::types::EncodingType::Url)
                    .into_paginator()
                    .send();
                let (mut objects, mut count) = (Vec::new(), 0);
                while let Some(page) = pages.next().await {
                    count += 1;
                    let page = page.map_err(|e| self.sdk_error("s3:ListBucket", e))?;
                    for o in page.contents() {
                        let key = url_decode(o.key().unwrap_or_default());
                        let version = match (o.e_tag(), o.last_modified()) {
                            (Some(etag), _) if !etag.is_empty() => Version::ETag(etag.into()),
                            (_, Some(modified)) => {
                                NO_ETAGS.call_once(|| tracing::warn!(url = %self.url(), "the listing carries no ETags: changes are found by size and LastModified"));
                                Version::Modified(*modified)
                            }
                            _ => {
                                return Err(SourceError::Corrupt {
                                    key,
                                    why: "listed with neither ETag nor LastModified".into(),
                                });
                            }
                        };
                        objects.push(Object {
                            key,
                            version,
                            size: o.size().unwrap_or_default().max(0) as u64,
                        });
                    }
                }
                Ok((objects, count))
            }
            Source::Dir { root } => {
                let root = root.clone();
                let objects = tokio::task::spawn_blocking(move || walk(&root))
                    .await
                    .map_err(|e| SourceError::Failed {
                        url: self.url(),
                        why: e.to_string(),
                    })??;
                Ok((objects, 1))
            }
        }
    }

    /// Downloads `object` into `file` (empty, created by the tree; `to` names it in
    /// messages), verified: never more bytes than listed. Returns the bytes written.
    pub async fn fetch(
        &self,
        object: &Object,
        file: std::fs::File,
        to: &Path,
    ) -> Result<u64, SourceError> {
        let local = |source| SourceError::Local {
            path: to.to_path_buf(),
            source,
        };
        let mut file = tokio::fs::File::from_std(file);
        let too_long = || SourceError::Corrupt {
            key: object.key.clone(),
            why: format!("the body is longer than the {} bytes listed", object.size),
        };
        let mut md5 = Md5::new();
        let mut written = 0u64;
        let mut expected_md5 = None;
        match self {
            Source::S3 { client, bucket, .. } => {
                let answer = client
                    .get_object()
                    .bucket(bucket)
                    .key(&object.key)
                    .set_if_match(object.version.etag().map(str::to_string))
                    .checksum_mode(ChecksumMode::Enabled)
                    .send()
                    .await
                    .map_err(|e| match e.raw_response().map(|r| r.status().as_u16()) {
                        Some(412) => SourceError::Changed {
                            key: object.key.clone(),
                        },
                        _ => self.sdk_error("s3:GetObject", e),
                    })?;
                let changed = match &object.version {
                    Version::ETag(listed) => answer
                        .e_tag()
                        .is_some_and(|got| got.trim_matches('"') != listed.trim_matches('"')),
                    // Last-Modified is to the second; a listing may give milliseconds.
                    Version::Modified(listed) => answer
                        .last_modified()
                        .is_none_or(|got| got.secs() != listed.secs()),
                    Version::File(_) => false,
                };
                if changed {
                    return Err(SourceError::Changed {
                        key: object.key.clone(),
                    });
                }
                let check = Check::of(&answer, object.version.etag());
                expected_md5 = check.md5.clone();
                let mut body = answer.body;
                while let Some(chunk) = body.next().await {
                    let chunk = chunk.map_err(|e| check.body_error(&self.url(), &object.key, e))?;
                    if written + chunk.len() as u64 > object.size {
                        return Err(too_long());
                    }
                    if expected_md5.is_some() {
                        md5.update(&chunk);
                    }
                    written += chunk.len() as u64;
                    file.write_all(&chunk).await.map_err(local)?;
                }
            }
            Source::Dir { root } => {
                // The open descriptor is what is checked and copied: a file, as listed,
                // reached without following a symlink anywhere below the root.
                let from = root.join(&object.key);
                let source_error = |e: std::io::Error| SourceError::Local {
                    path: from.clone(),
                    source: e,
                };
                let (input, st) = open_below(root, Path::new(&object.key)).map_err(source_error)?;
                if Version::File(stat_token(&st)) != object.version {
                    return Err(SourceError::Changed {
                        key: object.key.clone(),
                    });
                }
                let mut input = tokio::io::AsyncReadExt::take(
                    tokio::fs::File::from_std(input),
                    object.size + 1,
                );
                written = tokio::io::copy(&mut input, &mut file)
                    .await
                    .map_err(local)?;
                if written > object.size {
                    return Err(too_long());
                }
            }
        }
        file.flush().await.map_err(local)?;
        if written != object.size {
            return Err(SourceError::Corrupt {
                key: object.key.clone(),
                why: format!("{written} bytes received, {} listed", object.size),
            });
        }
        if let Some(expected) = expected_md5 {
            let got = hex::encode(md5.finalize());
            if got != expected {
                return Err(SourceError::Corrupt {
                    key: object.key.clone(),
                    why: format!("MD5 {got}, ETag says {expected}"),
                });
            }
        }
        Ok(written)
    }

    /// An S3 error; a refusal names the IAM action that was refused.
    fn sdk_error<E>(
        &self,
        action: &str,
        e: aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    ) -> SourceError
    where
        E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
    {
        sdk_error(&self.url(), action, e)
    }
}

/// How one GET answer is verified beyond its size.
struct Check {
    /// The full-object checksum the SDK verifies as the body streams (its name).
    checksum: Option<&'static str>,
    /// Its value as answered (base64), which a ranged download verifies itself.
    value: Option<String>,
    /// Else the MD5 a single-part ETag promises, which we verify.
    md5: Option<String>,
}

impl Check {
    fn of(answer: &GetObjectOutput, listed_etag: Option<&str>) -> Check {
        // The SDK's order: the first of these the answer carries is the one it verifies.
        let composite = matches!(answer.checksum_type(), Some(ChecksumType::Composite));
        let checksum = [
            ("CRC64NVME", answer.checksum_crc64_nvme()),
            ("CRC32C", answer.checksum_crc32_c()),
            ("CRC32", answer.checksum_crc32()),
            ("SHA-1", answer.checksum_sha1()),
            ("SHA-256", answer.checksum_sha256()),
        ]
        .into_iter()
        .find_map(|(name, value)| value.map(|v| (name, v)))
        .filter(|(_, value)| !composite && !value.contains('-'));
        let (checksum, value) = match checksum {
            Some((name, value)) => (Some(name), Some(value.to_string())),
            None => (None, None),
        };
        let md5 = match checksum {
            Some(_) => None,
            None => md5_in_etag(
                answer.e_tag().or(listed_etag),
                answer.server_side_encryption(),
                answer.sse_customer_algorithm().is_some(),
            ),
        };
        Check {
            checksum,
            value,
            md5,
        }
    }

    /// For a ranged download: the hasher of the full-object checksum the SDK would have
    /// verified, and the value it must end at.
    fn hasher(&self) -> Option<(Box<dyn HttpChecksum>, String)> {
        let algorithm = match self.checksum? {
            "CRC64NVME" => ChecksumAlgorithm::Crc64Nvme,
            "CRC32C" => ChecksumAlgorithm::Crc32c,
            "CRC32" => ChecksumAlgorithm::Crc32,
            "SHA-1" => ChecksumAlgorithm::Sha1,
            "SHA-256" => ChecksumAlgorithm::Sha256,
            _ => return None,
        };
        Some((algorithm.into_impl(), self.value.clone()?))
    }

    /// What was verified, for the log and the manifest.
    fn name(&self) -> &'static str {
        match (self.checksum, &self.md5) {
            (Some(name), _) => name,
            (None, Some(_)) => "MD5",
            (None, None) => "size",
        }
    }

    /// A body that failed mid-stream: a checksum the SDK found wrong is corruption (76);
    /// anything else (a dropped connection) is a transfer to try again.
    fn body_error(
        &self,
        url: &str,
        key: &str,
        e: aws_smithy_types::byte_stream::error::Error,
    ) -> SourceError {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(c) = cause {
            if c.is::<aws_smithy_checksums::body::validate::Error>() {
                return SourceError::Corrupt {
                    key: key.to_string(),
                    why: format!(
                        "the body does not match its {} checksum",
                        self.checksum.unwrap_or("S3")
                    ),
                };
            }
            cause = c.source();
        }
        SourceError::Failed {
            url: url.to_string(),
            why: format!("{key}: {}", DisplayErrorContext(&e)),
        }
    }
}

/// One archive: an S3 object or a local file.
pub enum Bundle {
    S3 {
        client: Client,
        bucket: String,
        key: String,
        format: Format,
    },
    File {
        path: PathBuf,
        format: Format,
    },
}

/// What asking for a bundle found.
pub enum Fetched {
    /// The version given as `known` is still the current one (S3 answered 304).
    Unchanged,
    /// No such object or file.
    Missing,
    Body(Box<Download>),
}

/// A bundle's bytes as they arrive, each chunk checked and counted.
pub struct Download {
    /// The version's token (the ETag, for S3) and size.
    pub etag: String,
    pub size: u64,
    key: String,
    url: String,
    body: Body,
    check: Check,
    read: u64,
    md5: Md5,
    sha256: Option<sha2::Sha256>,
    /// A ranged download's full-object checksum, computed here (the SDK verifies a single
    /// GET's), and the value answered.
    checksum: Option<(Box<dyn HttpChecksum>, String)>,
    /// How many GETs the body takes: 1, or its parts.
    pub parts: u64,
}

enum Body {
    S3(ByteStream),
    File(tokio::fs::File),
    Parts(Box<Ranges>),
}

/// How a large bundle is fetched: in byte ranges, several at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parts {
    /// In parts only when the bundle is larger than this many bytes…
    pub above: u64,
    /// …in parts of this many bytes (the last one shorter)…
    pub size: u64,
    /// …at most this many downloading or waiting at once; 1 is one stream.
    pub in_flight: usize,
}

impl Default for Parts {
    fn default() -> Parts {
        Parts {
            above: 16 << 20,
            size: 8 << 20,
            in_flight: 8,
        }
    }
}

impl Parts {
    /// How many parts an object of `size` bytes is fetched in (1: one stream). Only an
    /// answer with an ETag can pin its ranges to one version.
    pub fn count(&self, size: u64, etag: bool) -> u64 {
        match etag && self.in_flight > 1 && size > self.above && size > self.size {
            true => size.div_ceil(self.size.max(1)),
            false => 1,
        }
    }
}

impl Bundle {
    pub fn url(&self) -> String {
        match self {
            Bundle::S3 { bucket, key, .. } => format!("s3://{bucket}/{key}"),
            Bundle::File { path, .. } => format!("file://{}", path.display()),
        }
    }

    pub fn format(&self) -> Format {
        match self {
            Bundle::S3 { format, .. } | Bundle::File { format, .. } => *format,
        }
    }

    /// Asks for the bundle: nothing more than a 304 when `known` (a token from an
    /// earlier [`Download::etag`]) is still current. With `sha256`, the download computes
    /// the archive's SHA-256 for [`Download::finish`]. A large S3 object comes in `parts`,
    /// each retried on its own until `deadline`.
    pub async fn fetch(
        &self,
        known: Option<&str>,
        sha256: bool,
        parts: Parts,
        deadline: Deadline,
    ) -> Result<Fetched, SourceError> {
        use sha2::Digest as _;
        let url = self.url();
        let (etag, size, key, body, check) = match self {
            Bundle::S3 {
                client,
                bucket,
                key,
                ..
            } => {
                let answer = client
                    .get_object()
                    .bucket(bucket)
                    .key(key)
                    .set_if_none_match(known.map(str::to_string))
                    .checksum_mode(ChecksumMode::Enabled)
                    .send()
                    .await;
                let answer = match answer {
                    Ok(answer) => answer,
                    Err(e) => {
                        return match e.raw_response().map(|r| r.status().as_u16()) {
                            Some(304) => Ok(Fetched::Unchanged),
                            Some(404) => Ok(Fetched::Missing),
                            _ => Err(sdk_error(&url, "s3:GetObject", e)),
                        };
                    }
                };
                let etag = match (answer.e_tag(), answer.last_modified()) {
                    (Some(etag), _) if !etag.is_empty() => etag.to_string(),
                    (_, Some(t)) => Version::Modified(*t).token(),
                    _ => {
                        return Err(SourceError::Corrupt {
                            key: key.clone(),
                            why: "answered with neither ETag nor Last-Modified".into(),
                        });
                    }
                };
                let size = answer.content_length().unwrap_or_default().max(0) as u64;
                let check = Check::of(&answer, None);
                let pinned = answer.e_tag().filter(|e| !e.is_empty());
                let body = match (pinned, parts.count(size, pinned.is_some())) {
                    (Some(pinned), count) if count > 1 => {
                        let get = Arc::new(PartGet {
                            client: client.clone(),
                            bucket: bucket.clone(),
                            key: key.clone(),
                            etag: pinned.to_string(),
                            url: url.clone(),
                            size,
                            part: parts.size,
                            deadline,
                        });
                        Body::Parts(Box::new(Ranges::start(
                            get,
                            count,
                            parts.in_flight,
                            answer.body,
                        )))
                    }
                    _ => Body::S3(answer.body),
                };
                (etag, size, key.clone(), body, check)
            }
            Bundle::File { path, .. } => {
                let local = |source| SourceError::Local {
                    path: path.clone(),
                    source,
                };
                let flags = nix::fcntl::OFlag::O_RDONLY
                    | nix::fcntl::OFlag::O_NOFOLLOW
                    | nix::fcntl::OFlag::O_NONBLOCK
                    | nix::fcntl::OFlag::O_CLOEXEC;
                let fd = match nix::fcntl::open(path, flags, nix::sys::stat::Mode::empty()) {
                    Ok(fd) => fd,
                    Err(nix::errno::Errno::ENOENT) => return Ok(Fetched::Missing),
                    Err(e) => return Err(local(fsat::io(e))),
                };
                let st = nix::sys::stat::fstat(&fd).map_err(|e| local(fsat::io(e)))?;
                if !fsat::is_file(&st) {
                    return Err(local(std::io::Error::other("not a regular file")));
                }
                let etag = stat_token(&st);
                if known == Some(etag.as_str()) {
                    return Ok(Fetched::Unchanged);
                }
                let file = tokio::fs::File::from_std(std::fs::File::from(fd));
                let check = Check {
                    checksum: None,
                    value: None,
                    md5: None,
                };
                let key = path.display().to_string();
                (etag, st.st_size as u64, key, Body::File(file), check)
            }
        };
        let (checksum, parts) = match &body {
            Body::Parts(ranges) => (check.hasher(), ranges.count),
            Body::S3(_) | Body::File(_) => (None, 1),
        };
        Ok(Fetched::Body(Box::new(Download {
            etag,
            size,
            key,
            url,
            body,
            check,
            read: 0,
            md5: Md5::new(),
            sha256: sha256.then(sha2::Sha256::new),
            checksum,
            parts,
        })))
    }
}

impl Download {
    /// The next chunk of the body; `None` at its end. Never more bytes than announced.
    pub async fn next(&mut self) -> Option<Result<Bytes, SourceError>> {
        use sha2::Digest as _;
        let chunk = match &mut self.body {
            Body::S3(stream) => match stream.next().await? {
                Ok(chunk) => chunk,
                Err(e) => return Some(Err(self.check.body_error(&self.url, &self.key, e))),
            },
            Body::Parts(ranges) => match ranges.next().await? {
                Ok(chunk) => chunk,
                Err(e) => return Some(Err(e)),
            },
            Body::File(file) => {
                let mut buffer = vec![0u8; 256 * 1024];
                match file.read(&mut buffer).await {
                    Ok(0) => return None,
                    Ok(n) => {
                        buffer.truncate(n);
                        Bytes::from(buffer)
                    }
                    Err(source) => {
                        let path = PathBuf::from(&self.key);
                        return Some(Err(SourceError::Local { path, source }));
                    }
                }
            }
        };
        if self.read + chunk.len() as u64 > self.size {
            return Some(Err(SourceError::Corrupt {
                key: self.key.clone(),
                why: format!("the body is longer than the {} bytes announced", self.size),
            }));
        }
        self.read += chunk.len() as u64;
        if self.check.md5.is_some() {
            self.md5.update(&chunk);
        }
        if let Some(sha) = &mut self.sha256 {
            sha.update(&chunk);
        }
        if let Some((hasher, _)) = &mut self.checksum {
            hasher.update(&chunk);
        }
        Some(Ok(chunk))
    }

    /// After the last chunk: the size, the MD5 of a plain ETag, and `pin` (a SHA-256 in
    /// hex) checked. Returns what was verified (`"CRC64NVME"`, `"MD5"`, `"size"`, with
    /// `"+SHA-256"` when pinned).
    pub fn finish(self, pin: Option<&str>) -> Result<String, SourceError> {
        use sha2::Digest as _;
        let corrupt = |why: String| SourceError::Corrupt {
            key: self.key.clone(),
            why,
        };
        if self.read != self.size {
            return Err(corrupt(format!(
                "{} bytes received, {} announced",
                self.read, self.size
            )));
        }
        if let Some(expected) = &self.check.md5 {
            let got = hex::encode(self.md5.finalize());
            if got != *expected {
                return Err(corrupt(format!("MD5 {got}, ETag says {expected}")));
            }
        }
        if let Some((hasher, expected)) = self.checksum {
            let got = aws_smithy_types::base64::encode(hasher.finalize());
            if got != expected {
                return Err(corrupt(format!(
                    "the body does not match its {} checksum",
                    self.check.checksum.unwrap_or("S3")
                )));
            }
        }
        let mut verified = self.check.name().to_string();
        if let (Some(pin), Some(sha)) = (pin, self.sha256) {
            let got = hex::encode(sha.finalize());
            if !got.eq_ignore_ascii_case(pin) {
                return Err(corrupt(format!(
                    "its SHA-256 is {got}, the entry pins {pin}: not the archive it names"
                )));
            }
            verified.push_str("+SHA-256");
        }
        Ok(verified)
    }
}

/// What every part's GET shares: the object, pinned to one ETag.
struct PartGet {
    client: Client,
    bucket: String,
    key: String,
    etag: String,
    url: String,
    size: u64,
    part: u64,
    deadline: Deadline,
}

impl PartGet {
    /// Part `index`'s bytes: from `first` (the first GET's body, for part 0) if it serves
    /// them whole, else by ranged GETs, retried until the deadline.
    async fn fetch(
        self: Arc<Self>,
        index: u64,
        first: Option<ByteStream>,
    ) -> Result<Vec<Bytes>, SourceError> {
        let start = index * self.part;
        let end = (start + self.part).min(self.size);
        if let Some(body) = first {
            match self.read(body, end - start, start).await {
                Ok(chunks) => return Ok(chunks),
                Err(SourceError::Failed { why, .. }) => {
                    tracing::warn!(key = %self.key, part = index, "{why}; fetching the part again");
                }
                Err(e) => return Err(e),
            }
        }
        let on_retry = |e: &SourceError, attempt: u32, sleep: std::time::Duration| {
            tracing::warn!(key = %self.key, part = index, "{e}; fetching the part again in {sleep:.1?} (retry {attempt})");
        };
        retry::until_deadline(retry::BACKOFF, self.deadline, on_retry, || {
            self.get(start, end)
        })
        .await
    }

    /// One ranged GET of bytes `start..end`, pinned to the ETag.
    async fn get(&self, start: u64, end: u64) -> Result<Vec<Bytes>, SourceError> {
        // No checksum mode: S3 answers none for a range, and a server that sent the
        // whole object's would fail the part. The whole object is verified in order.
        let answer = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&self.key)
            .if_match(&self.etag)
            .range(format!("bytes={start}-{}", end - 1))
            .customize()
            .config_override(aws_sdk_s3::Config::builder().response_checksum_validation(
                aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired,
            ))
            .send()
            .await
            .map_err(|e| match e.raw_response().map(|r| r.status().as_u16()) {
                Some(412) => SourceError::Changed {
                    key: self.key.clone(),
                },
                _ => sdk_error(&self.url, "s3:GetObject", e),
            })?;
        // A server that ignores If-Match: another ETag is the change all the same.
        if answer
            .e_tag()
            .is_some_and(|got| got.trim_matches('"') != self.etag.trim_matches('"'))
        {
            return Err(SourceError::Changed {
                key: self.key.clone(),
            });
        }
        let asked = format!("bytes {start}-{}/{}", end - 1, self.size);
        if answer.content_range() != Some(asked.as_str()) {
            return Err(SourceError::Corrupt {
                key: self.key.clone(),
                why: format!(
                    "asked for {asked}, answered {}: a server that does not serve byte ranges needs \"parts_in_flight\": 1",
                    answer.content_range().unwrap_or("the whole object")
                ),
            });
        }
        self.read(answer.body, end - start, start).await
    }

    /// `len` bytes of `body` (which may go on past them), as they came.
    async fn read(
        &self,
        mut body: ByteStream,
        len: u64,
        start: u64,
    ) -> Result<Vec<Bytes>, SourceError> {
        let mut chunks = Vec::new();
        let mut got = 0u64;
        while got < len {
            let mut chunk = match body.next().await {
                Some(Ok(chunk)) => chunk,
                Some(Err(e)) => {
                    return Err(SourceError::Failed {
                        url: self.url.clone(),
                        why: format!(
                            "{}: bytes from {}: {}",
                            self.key,
                            start + got,
                            DisplayErrorContext(&e)
                        ),
                    });
                }
                None => {
                    return Err(SourceError::Failed {
                        url: self.url.clone(),
                        why: format!(
                            "{}: the part from byte {start} ended after {got} of its {len} bytes",
                            self.key
                        ),
                    });
                }
            };
            if got + chunk.len() as u64 > len {
                chunk.truncate((len - got) as usize);
            }
            got += chunk.len() as u64;
            chunks.push(chunk);
        }
        Ok(chunks)
    }
}

/// A part being fetched on its own task; dropping it (the pass ends: its deadline,
/// SIGTERM, an error) stops the fetch.
struct PartTask(tokio::task::JoinHandle<Result<Vec<Bytes>, SourceError>>);

impl Drop for PartTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The parts of one object, handed on in order. Bounded memory: at most `in_flight` parts
/// are downloading or waiting (`queue`), and a new one starts only when the part before
/// it has been handed on entirely, so the parts hold at most `in_flight × part` bytes.
struct Ranges {
    get: Arc<PartGet>,
    count: u64,
    in_flight: usize,
    /// The next part to start.
    next: u64,
    queue: VecDeque<PartTask>,
    /// The chunks of the part being handed on.
    current: VecDeque<Bytes>,
}

impl Ranges {
    fn start(get: Arc<PartGet>, count: u64, in_flight: usize, first: ByteStream) -> Ranges {
        let mut ranges = Ranges {
            get,
            count,
            in_flight: in_flight.max(1),
            next: 0,
            queue: VecDeque::new(),
            current: VecDeque::new(),
        };
        let part0 = tokio::spawn(ranges.get.clone().fetch(0, Some(first)));
        ranges.queue.push_back(PartTask(part0));
        ranges.next = 1;
        ranges.top_up();
        ranges
    }

    /// Starts parts until `in_flight` are under way (or none is left).
    fn top_up(&mut self) {
        while self.queue.len() < self.in_flight && self.next < self.count {
            let task = tokio::spawn(self.get.clone().fetch(self.next, None));
            self.queue.push_back(PartTask(task));
            self.next += 1;
        }
    }

    async fn next(&mut self) -> Option<Result<Bytes, SourceError>> {
        loop {
            if let Some(chunk) = self.current.pop_front() {
                return Some(Ok(chunk));
            }
            // The part before is handed on: its room goes to the next part.
            self.top_up();
            let mut task = self.queue.pop_front()?;
            match (&mut task.0).await {
                Ok(Ok(chunks)) => self.current = chunks.into(),
                Ok(Err(e)) => return Some(Err(e)),
                Err(e) => {
                    return Some(Err(SourceError::Failed {
                        url: self.get.url.clone(),
                        why: format!("{}: a part's task: {e}", self.get.key),
                    }));
                }
            }
        }
    }
}

/// An S3 error; a refusal names the IAM action that was refused.
fn sdk_error<E>(
    url: &str,
    action: &str,
    e: aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> SourceError
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    let url = url.to_string();
    let failure = aws::classify("S3", &e);
    let why = failure.message;
    match failure.kind {
        Kind::Refused => SourceError::Refused {
            url,
            why: format!("{action}: {why}"),
        },
        Kind::Throttled => SourceError::Throttled { url, why },
        // Every other answer may pass on a later attempt of the pass: a prefix whose
        // objects moved, an unreachable S3.
        Kind::Transient | Kind::Permanent => SourceError::Failed { url, why },
    }
}

/// Keys from an `encoding-type=url` listing (and S3 event notifications): `+` is a space,
/// `%XX` a byte.
pub fn url_decode(key: &str) -> String {
    let spaced = key.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8_lossy()
        .into_owned()
}

/// Warned about once per process (watch mode lists again every interval).
static NO_ETAGS: std::sync::Once = std::sync::Once::new();

/// The MD5 an answer's ETag promises, if it promises one: not for a multipart upload's
/// ETag (`…-N`), nor for an object encrypted with SSE-KMS or SSE-C, whose ETag is not the
/// MD5 of its bytes.
fn md5_in_etag(
    etag: Option<&str>,
    sse: Option<&ServerSideEncryption>,
    customer_key: bool,
) -> Option<String> {
    let kms = matches!(
        sse,
        Some(ServerSideEncryption::AwsKms | ServerSideEncryption::AwsKmsDsse)
    );
    etag.filter(|_| !kms && !customer_key).and_then(plain_md5)
}

/// The MD5 in a single-part ETag (`"9e107d9d372bb6826bd81d3542a419d6"`).
fn plain_md5(etag: &str) -> Option<String> {
    let inner = etag.trim_matches('"');
    (inner.len() == 32 && inner.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| inner.to_ascii_lowercase())
}

fn stat_token(st: &nix::sys::stat::FileStat) -> String {
    format!(
        "mtime-{}.{:09}-{}",
        st.st_mtime, st.st_mtime_nsec, st.st_size
    )
}

/// The regular file at `rel` below `root`, opened without following a symlink at any
/// step, with its `fstat`.
fn open_below(
    root: &Path,
    rel: &Path,
) -> std::io::Result<(std::fs::File, nix::sys::stat::FileStat)> {
    let root: OwnedFd = std::fs::File::open(root)?.into();
    let (dir, name) = fsat::parent_at(&root, rel)?;
    fsat::open_file(&dir, name)
}

/// Every regular file below `root`, walked through descriptors: symlinks (to files or
/// directories) and special files are skipped with a warning, never followed.
fn walk(root: &Path) -> Result<Vec<Object>, SourceError> {
    let local = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SourceError::Local { path, source }
    };
    let url = || format!("file://{}", root.display());
    match std::fs::metadata(root) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(SourceError::NoDirectory {
                url: url(),
                why: nearest_directory(root),
            });
        }
        Ok(meta) if !meta.is_dir() => {
            return Err(SourceError::Shape {
                url: url(),
                why: "a file, not a directory: a file:// source is a directory (file:///DIR/) \
                      or an archive (.tar, .tar.gz, .tgz, .tar.zst)"
                    .into(),
            });
        }
        _ => {}
    }
    let top: OwnedFd = std::fs::File::open(root).map_err(local(root))?.into();
    let mut out = Vec::new();
    let mut stack = vec![(PathBuf::new(), top)];
    while let Some((rel, dir)) = stack.pop() {
        let here = root.join(&rel);
        for name in fsat::names(&dir).map_err(local(&here))? {
            let path = here.join(&name);
            let st = fsat::stat_at(&dir, &name).map_err(local(&path))?;
            if fsat::is_dir(&st) {
                let inner = fsat::open_dir(&dir, &name).map_err(local(&path))?;
                stack.push((rel.join(&name), inner));
            } else if fsat::is_file(&st) {
                out.push(Object {
                    key: rel.join(&name).to_string_lossy().into_owned(),
                    version: Version::File(stat_token(&st)),
                    size: st.st_size as u64,
                });
            } else {
                tracing::warn!(path = %path.display(), "skipping a source entry that is not a file or directory (symlinks are not followed)");
            }
        }
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

/// For a missing directory: which part of its path is missing.
fn nearest_directory(missing: &Path) -> String {
    let mut path = missing.components().as_path();
    let name = path
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let parent = path.parent().unwrap_or(Path::new("/"));
    if parent.is_dir() {
        return format!("{} has no {name}", parent.display());
    }
    while let Some(up) = path.parent() {
        path = up;
        if path.is_dir() {
            break;
        }
    }
    format!(
        "neither does {}; the nearest that exists is {}",
        parent.display(),
        path.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What each answer is verified by: the SDK's full-object checksum in its order, never
    /// a composite one (`-N`, or `ChecksumType::Composite`); else a single-part ETag's MD5,
    /// unless the object is SSE-KMS or SSE-C (whose ETag is no MD5) or multipart; else
    /// only the size.
    #[test]
    fn what_an_answer_is_verified_by() {
        use aws_sdk_s3::types::{ChecksumType, ServerSideEncryption as Sse};
        const MD5: &str = "\"9e107d9d372bb6826bd81d3542a419d6\"";
        let plain = || GetObjectOutput::builder().e_tag(MD5);
        let cases: Vec<(&str, GetObjectOutput, Option<&str>, &str)> = vec![
            (
                "crc32",
                plain().checksum_crc32("AAAAAA==").build(),
                None,
                "CRC32",
            ),
            (
                "crc64 before crc32",
                plain()
                    .checksum_crc32("AAAAAA==")
                    .checksum_crc64_nvme("AAAAAAAAAAA=")
                    .build(),
                None,
                "CRC64NVME",
            ),
            (
                "a composite checksum",
                plain().checksum_crc32("AAAAAA==-3").build(),
                None,
                "MD5",
            ),
            (
                "a composite type",
                plain()
                    .checksum_crc32("AAAAAA==")
                    .checksum_type(ChecksumType::Composite)
                    .build(),
                None,
                "MD5",
            ),
            ("no checksum", plain().build(), None, "MD5"),
            (
                "SSE-KMS",
                plain().server_side_encryption(Sse::AwsKms).build(),
                None,
                "size",
            ),
            (
                "SSE-C",
                plain().sse_customer_algorithm("AES256").build(),
                None,
                "size",
            ),
            (
                "multipart",
                GetObjectOutput::builder().e_tag("\"abc-2\"").build(),
                None,
                "size",
            ),
            (
                "the listing's ETag",
                GetObjectOutput::builder().build(),
                Some(MD5),
                "MD5",
            ),
        ];
        for (what, answer, listed, expected) in cases {
            assert_eq!(Check::of(&answer, listed).name(), expected, "{what}");
        }
        assert_eq!(
            Check::of(&plain().build(), None).md5.as_deref(),
            Some("9e107d9d372bb6826bd81d3542a419d6")
        );
    }

    #[test]
    fn urls() {
        assert_eq!(
            Location::parse("s3://b/app/config").unwrap(),
            Location::S3 {
                bucket: "b".into(),
                prefix: "app/config/".into()
            }
        );
        assert_eq!(
            Location::parse("s3://b").unwrap(),
            Location::S3 {
                bucket: "b".into(),
                prefix: "".into()
            }
        );
        assert_eq!(
            Location::parse("file:///srv/x").unwrap(),
            Location::Dir {
                root: "/srv/x".into()
            }
        );
        for bad in ["s3:///x", "file://rel/x", "http://x", "/abs"] {
            assert!(Location::parse(bad).is_err(), "{bad}");
        }
        for (shape, write) in [
            ("s3://b/app.tar.zst/", "s3://b/app.tar.zst"),
            ("file:///srv/app.tgz//", "file:///srv/app.tgz"),
        ] {
            let e = Location::parse(shape).unwrap_err().to_string();
            assert!(
                e.ends_with(&format!("is an archive's name: write {write}")),
                "{e}"
            );
        }
        assert_eq!(
            plain_md5("\"9E107D9D372BB6826BD81D3542A419D6\"").as_deref(),
            Some("9e107d9d372bb6826bd81d3542a419d6")
        );
        assert_eq!(plain_md5("\"9e107d9d372bb6826bd81d3542a419d6-2\""), None);
        let md5 = "\"9e107d9d372bb6826bd81d3542a419d6\"";
        let aes = ServerSideEncryption::Aes256;
        let kms = ServerSideEncryption::AwsKms;
        assert_eq!(
            md5_in_etag(Some(md5), Some(&aes), false).as_deref(),
            Some("9e107d9d372bb6826bd81d3542a419d6")
        );
        assert_eq!(md5_in_etag(Some(md5), Some(&kms), false), None);
        assert_eq!(md5_in_etag(Some(md5), None, true), None);
        assert_eq!(md5_in_etag(None, None, false), None);
    }
}
