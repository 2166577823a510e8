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
//! Bundles (one archive object or file, fetched whole or in parallel byte ranges) are
//! `bundle.rs`.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use aws_sdk_s3::Client;
use aws_sdk_s3::types::ServerSideEncryption;
use aws_smithy_types::error::display::DisplayErrorContext;

use crate::aws::{self, Kind};
use crate::sync::archive::Format;
use crate::sync::fsat;
use aws_sdk_s3::operation::get_object::GetObjectOutput;
use aws_sdk_s3::types::{ChecksumMode, ChecksumType};
use aws_smithy_checksums::ChecksumAlgorithm;
use aws_smithy_checksums::http::HttpChecksum;
use md5::{Digest, Md5};
use tokio::io::AsyncWriteExt;

mod bundle;
mod ranges;

pub use bundle::{Bundle, Fetched, Parts};

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
                    // Decoded only where the page says it is encoded: a server that
                    // ignores the request lists keys as they are (`a+b` is `a+b`).
                    let encoded =
                        page.encoding_type() == Some(&aws_sdk_s3::types::EncodingType::Url);
                    for o in page.contents() {
                        let key = match encoded {
                            true => url_decode(o.key().unwrap_or_default()),
                            false => o.key().unwrap_or_default().to_string(),
                        };
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
