//! Bundles ([`Bundle`]): one archive object (or file), fetched with one conditional GET
//! (`If-None-Match: <the ETag unpacked last>`: a 304 costs no body) and verified as an
//! object of a prefix is (`mod.rs`) while it streams, plus an optional pinned SHA-256.
//!
//! In parts ([`Parts`], unless `in_flight` is 1), that first GET asks for the first part
//! only (`Range: bytes=0-(size-1)`): its answer gives the ETag and, in `Content-Range`,
//! the object's size, so no body is ever dropped. A bundle no larger than a part is then
//! complete: one request, and S3 answers a range that covers the whole object with its
//! full-object checksum, as for a GET without a range. A larger one comes in byte ranges,
//! several at once, as aws-cli, s5cmd and the CRT fetch large objects (S3 serves each
//! connection at about 90 MB/s and scales with connections): the rest of it in parts of
//! [`Parts::size`] when it is larger than [`Parts::above`], else in one more range
//! ([`Layout`]). Every range after the first is a GET of `Range: bytes=A-B` with
//! `If-Match: <that ETag>`, so all parts are of one version (a 412 is
//! [`SourceError::Changed`], as for a prefix). S3 answers no checksum for a part of an
//! object, so one HEAD with `If-Match` and the checksum mode asks for the full-object
//! checksum while the parts download.
//!
//! The parts are handed on in order, so the archive streams into the unpacker and is
//! hashed in order. The first part is read as the unpacker asks while the second
//! downloads; how its first MiB came decides how the rest come ([`Ranges`]):
//! - **in parallel**, each part on its own task, its bytes kept until their turn, from 2 up
//!   to [`Parts::in_flight`] at once (all of them on a link slower than the unpacker,
//!   fewer on a fast one): where the network is what the bytes wait for, as on S3, which
//!   serves each connection at about 90 MB/s;
//! - **in turn**, one part at a time read as the unpacker asks, the next one's GET sent
//!   ahead: where this process's CPU is what they wait for (it was busy, on a CPU or
//!   waiting for one, half the time the first part took), or where the first parts in
//!   parallel came no faster than the first alone (a shared or busy server, many
//!   instances on one host). More connections would bring only more work there.
//!
//! Memory: at most `in_flight` parts exist, each holding at most its range's bytes not
//! yet handed on: `in_flight × size` (64 MiB by default; a bundle of at most `above`
//! bytes, at most its size), plus the chunks in the unpacker's channel; a part read in
//! turn holds none (its bytes wait in the socket). A part whose GET fails is fetched again
//! on its own, from its first byte not yet received, under the retry policy
//! ([`retry::BACKOFF`]) until the pass's deadline. The whole object is verified as a
//! single GET is: the full-object checksum the HEAD answered is computed here over the
//! parts in order (where S3 has only a composite checksum, as for one GET, the size and
//! the pin are what is checked). An empty object (a range of it is 416) and a server that
//! answers a part without an ETag are fetched as one GET.

use std::path::PathBuf;

use aws_sdk_s3::Client;
use aws_smithy_types::error::display::DisplayErrorContext;

use crate::base::busy::Busy;
use crate::base::retry::{self, Deadline};
use crate::sync::archive::Format;
use crate::sync::fsat;
use aws_sdk_s3::operation::get_object::GetObjectOutput;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ChecksumMode;
use aws_smithy_checksums::http::HttpChecksum;
use bytes::Bytes;
use md5::{Digest, Md5};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::AsyncReadExt;

use super::{Check, SourceError, Version, sdk_error, stat_token};

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
    /// Whether the first GET asks for the first part only.
    fn ranged(&self) -> bool {
        self.in_flight > 1 && self.size > 0
    }

    /// How many GETs an object of `size` bytes takes (1: one stream). Only an answer with
    /// an ETag can pin its ranges to one version.
    pub fn count(&self, size: u64, etag: bool) -> u64 {
        match etag && self.ranged() {
            true => self.layout(size, self.size).count(),
            false => 1,
        }
    }

    /// How an object of `size` bytes is fetched once the first GET answered its bytes
    /// `0..first`.
    fn layout(&self, size: u64, first: u64) -> Layout {
        let first = first.min(size);
        let part = match size > self.above {
            true => self.size.max(1),
            false => (size - first).max(1),
        };
        Layout { size, first, part }
    }
}

/// The byte ranges of one object: part 0 is what the first GET answered, the rest follow
/// in parts of `part` bytes (the last one shorter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    size: u64,
    first: u64,
    part: u64,
}

impl Layout {
    /// How many GETs the body takes.
    fn count(&self) -> u64 {
        1 + (self.size - self.first).div_ceil(self.part)
    }

    /// Part `index`'s bytes, `start..end`.
    fn range(&self, index: u64) -> (u64, u64) {
        match index {
            0 => (0, self.first),
            _ => {
                let start = self.first + (index - 1) * self.part;
                (start, (start + self.part).min(self.size))
            }
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
                let ranged = parts.ranged();
                let answer = client
                    .get_object()
                    .bucket(bucket)
                    .key(key)
                    .set_if_none_match(known.map(str::to_string))
                    .set_range(ranged.then(|| format!("bytes=0-{}", parts.size - 1)))
                    .checksum_mode(ChecksumMode::Enabled)
                    .send()
                    .await;
                let answer = match answer {
                    Ok(answer) => answer,
                    Err(e) => {
                        return match e.raw_response().map(|r| r.status().as_u16()) {
                            Some(304) => Ok(Fetched::Unchanged),
                            Some(404) => Ok(Fetched::Missing),
                            // No byte 0: an empty object, which one GET fetches.
                            Some(416) if ranged => {
                                Box::pin(self.fetch(
                                    known,
                                    sha256,
                                    Parts {
                                        in_flight: 1,
                                        ..parts
                                    },
                                    deadline,
                                ))
                                .await
                            }
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
                let length = answer.content_length().unwrap_or_default().max(0) as u64;
                let size = match answer.content_range() {
                    Some(range) => {
                        total_of(range, length, parts.size).ok_or_else(|| SourceError::Corrupt {
                            key: key.clone(),
                            why: format!(
                                "asked for bytes=0-{}, answered {range} for {length} bytes",
                                parts.size - 1
                            ),
                        })?
                    }
                    // A 200: the whole object (a server that ignores ranges, or one stream).
                    // A 206 without its Content-Range breaks HTTP (RFC 9110 §15.3.7); were
                    // one to truncate a bundle this way, the archive's own framing (zstd
                    // frames, tar headers) ends the unpack with an error, nothing swapped.
                    None => length,
                };
                let pinned = answer.e_tag().filter(|e| !e.is_empty()).map(str::to_string);
                match (length < size, pinned) {
                    // The whole object: one stream, its checksum verified by the SDK.
                    (false, _) => {
                        let check = Check::of(&answer, None);
                        (etag, size, key.clone(), Body::S3(answer.body), check)
                    }
                    // Without an ETag the parts cannot be pinned to one version.
                    (true, None) => {
                        drop(answer);
                        let one = Parts {
                            in_flight: 1,
                            ..parts
                        };
                        return Box::pin(self.fetch(known, sha256, one, deadline)).await;
                    }
                    (true, Some(pinned)) => {
                        let get = Arc::new(PartGet {
                            client: client.clone(),
                            bucket: bucket.clone(),
                            key: key.clone(),
                            etag: pinned,
                            url: url.clone(),
                            layout: parts.layout(size, length),
                            deadline,
                        });
                        let ranges = Ranges::start(get.clone(), parts.in_flight, answer.body);
                        // While the parts download: the full-object checksum.
                        let head = get.head().await?;
                        let check = Check::of(&head, None);
                        (
                            etag,
                            size,
                            key.clone(),
                            Body::Parts(Box::new(ranges)),
                            check,
                        )
                    }
                }
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
            Body::Parts(ranges) => (check.hasher(), ranges.get.layout.count()),
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

/// The object's size in a `Content-Range` answered to `bytes=0-(asked-1)` for `length`
/// bytes (`bytes 0-E/SIZE`); `None` unless it says exactly that, for no more than was
/// asked: part 0 heads the queue to the unpacker, and a server that sent more than a part
/// would break the memory bound of parts in flight times their size.
fn total_of(range: &str, length: u64, asked: u64) -> Option<u64> {
    let (span, size) = range.strip_prefix("bytes ")?.split_once('/')?;
    let (start, end) = span.split_once('-')?;
    let (start, end, size) = (
        start.parse::<u64>().ok()?,
        end.parse::<u64>().ok()?,
        size.parse::<u64>().ok()?,
    );
    (start == 0 && end.checked_add(1) == Some(length) && length <= size && length <= asked)
        .then_some(size)
}

/// What every part's GET shares: the object, pinned to one ETag.
struct PartGet {
    client: Client,
    bucket: String,
    key: String,
    etag: String,
    url: String,
    layout: Layout,
    deadline: Deadline,
}

impl PartGet {
    /// Sends part `index`'s bytes on `tx` as they arrive, by ranged GETs; a GET that fails
    /// part way is followed by one of the bytes still missing, retried until the deadline.
    /// A failure that is not retried is sent as the part's last item. Stops when `tx`'s
    /// receiver is gone.
    async fn fetch(self: Arc<Self>, index: u64, tx: PartSender) {
        let (start, end) = self.layout.range(index);
        let got = AtomicU64::new(start);
        let on_retry = |e: &SourceError, attempt: u32, sleep: std::time::Duration| {
            tracing::warn!(key = %self.key, part = index, "{e}; fetching the rest of the part again in {sleep:.1?} (retry {attempt})");
        };
        let fetched = retry::until_deadline(retry::BACKOFF, self.deadline, on_retry, || {
            self.get(&got, end, &tx)
        })
        .await;
        if let Err(e) = fetched {
            let _ = tx.send(Err(e));
        }
    }

    /// The object's full-object checksum (and what else [`Check`] reads), from a HEAD
    /// pinned to the ETag, retried until the deadline: S3 answers none for a part.
    async fn head(&self) -> Result<GetObjectOutput, SourceError> {
        let on_retry = |e: &SourceError, attempt: u32, sleep: std::time::Duration| {
            tracing::warn!(key = %self.key, "{e}; asking for its checksum again in {sleep:.1?} (retry {attempt})");
        };
        let head = retry::until_deadline(retry::BACKOFF, self.deadline, on_retry, || async {
            self.client
                .head_object()
                .bucket(&self.bucket)
                .key(&self.key)
                .if_match(&self.etag)
                .checksum_mode(ChecksumMode::Enabled)
                .send()
                .await
                .map_err(|e| match e.raw_response().map(|r| r.status().as_u16()) {
                    Some(412) => SourceError::Changed {
                        key: self.key.clone(),
                    },
                    _ => sdk_error(&self.url, "s3:GetObject", e),
                })
        })
        .await?;
        if head
            .e_tag()
            .is_some_and(|got| got.trim_matches('"') != self.etag.trim_matches('"'))
        {
            return Err(SourceError::Changed {
                key: self.key.clone(),
            });
        }
        Ok(GetObjectOutput::builder()
            .set_e_tag(head.e_tag)
            .set_checksum_crc64_nvme(head.checksum_crc64_nvme)
            .set_checksum_crc32_c(head.checksum_crc32_c)
            .set_checksum_crc32(head.checksum_crc32)
            .set_checksum_sha1(head.checksum_sha1)
            .set_checksum_sha256(head.checksum_sha256)
            .set_checksum_type(head.checksum_type)
            .set_server_side_encryption(head.server_side_encryption)
            .set_sse_customer_algorithm(head.sse_customer_algorithm)
            .build())
    }

    /// One ranged GET of bytes `got..end`, pinned to the ETag, sent on `tx`.
    async fn get(&self, got: &AtomicU64, end: u64, tx: &PartSender) -> Result<(), SourceError> {
        let body = self.open(got.load(Ordering::Relaxed), end).await?;
        self.read(body, got, end, tx).await
    }

    /// The body of one ranged GET of bytes `start..end`, pinned to the ETag; its answer
    /// checked (the ETag, the range).
    async fn open(&self, start: u64, end: u64) -> Result<ByteStream, SourceError> {
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
        let asked = format!("bytes {start}-{}/{}", end - 1, self.layout.size);
        if answer.content_range() != Some(asked.as_str()) {
            return Err(SourceError::Corrupt {
                key: self.key.clone(),
                why: format!(
                    "asked for {asked}, answered {}: a server that does not serve byte ranges needs \"parts_in_flight\": 1",
                    answer.content_range().unwrap_or("the whole object")
                ),
            });
        }
        Ok(answer.body)
    }

    /// [`PartGet::open`], retried until the deadline.
    async fn open_retrying(
        &self,
        index: u64,
        start: u64,
        end: u64,
    ) -> Result<ByteStream, SourceError> {
        let on_retry = |e: &SourceError, attempt: u32, sleep: std::time::Duration| {
            tracing::warn!(key = %self.key, part = index, "{e}; asking for the part again in {sleep:.1?} (retry {attempt})");
        };
        retry::until_deadline(retry::BACKOFF, self.deadline, on_retry, || {
            self.open(start, end)
        })
        .await
    }

    /// The bytes of `body` from `got` up to `end`, sent on `tx` as they come; `got`
    /// counts them.
    async fn read(
        &self,
        mut body: ByteStream,
        got: &AtomicU64,
        end: u64,
        tx: &PartSender,
    ) -> Result<(), SourceError> {
        let start = got.load(Ordering::Relaxed);
        loop {
            let at = got.load(Ordering::Relaxed);
            if at >= end {
                return Ok(());
            }
            let chunk = self.chunk(&mut body, start, at, end).await?;
            got.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            if tx.send(Ok(chunk)).is_err() {
                return Ok(());
            }
        }
    }

    /// The next chunk of a part's `body` that began at byte `start`, is at `at` and ends
    /// at `end` (cut there: a body may go on past it); a failure or an early end is
    /// [`SourceError::Failed`], which is retried.
    async fn chunk(
        &self,
        body: &mut ByteStream,
        start: u64,
        at: u64,
        end: u64,
    ) -> Result<Bytes, SourceError> {
        let mut chunk = match body.next().await {
            Some(Ok(chunk)) => chunk,
            Some(Err(e)) => {
                return Err(SourceError::Failed {
                    url: self.url.clone(),
                    why: format!("{}: bytes from {at}: {}", self.key, DisplayErrorContext(&e)),
                });
            }
            None => {
                return Err(SourceError::Failed {
                    url: self.url.clone(),
                    why: format!(
                        "{}: the range from byte {start} ended at {at}, before {end}",
                        self.key
                    ),
                });
            }
        };
        if at + chunk.len() as u64 > end {
            chunk.truncate((end - at) as usize);
        }
        Ok(chunk)
    }
}

/// Where a part's task sends its bytes, in order; an error is its last item. Unbounded,
/// and bounded all the same: a part is at most its range's bytes.
type PartSender = tokio::sync::mpsc::UnboundedSender<Result<Bytes, SourceError>>;

/// A part in the queue: read ahead on its own task, or read only as the unpacker asks.
enum Part {
    Ahead(Ahead),
    Inline(Inline),
}

/// A part being fetched on its own task, its bytes kept until their turn; dropping it
/// (the pass ends: its deadline, SIGTERM, an error) stops the fetch.
struct Ahead {
    rx: tokio::sync::mpsc::UnboundedReceiver<Result<Bytes, SourceError>>,
    task: tokio::task::JoinHandle<()>,
    /// Its bytes not yet handed on.
    left: u64,
}

impl Drop for Ahead {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A part read as the unpacker asks, with no copy of its bytes in between: its GET is
/// sent ahead of its turn (on a task, so the answer is there when the turn comes), and
/// its body waits in the socket, which TCP's flow control bounds. A body that fails part
/// way is asked for again from the first byte it lacks, after a wait of the retry policy.
struct Inline {
    index: u64,
    /// The GET sent ahead, until it answered.
    open: Option<tokio::task::JoinHandle<Result<ByteStream, SourceError>>>,
    body: Option<ByteStream>,
    start: u64,
    /// The next byte, and the end.
    got: u64,
    end: u64,
    /// Waits before asking again after a body failed part way.
    backoff: Box<dyn Iterator<Item = std::time::Duration> + Send>,
}

impl Drop for Inline {
    fn drop(&mut self) {
        if let Some(open) = &self.open {
            open.abort();
        }
    }
}

impl Inline {
    fn new(index: u64, (start, end): (u64, u64), body: Option<ByteStream>) -> Inline {
        Inline {
            index,
            open: None,
            body,
            start,
            got: start,
            end,
            backoff: Box::new(retry::BACKOFF.full_jitter()),
        }
    }

    /// The next chunk; `None` once the part is whole.
    async fn next(&mut self, get: &PartGet) -> Option<Result<Bytes, SourceError>> {
        loop {
            if self.got >= self.end {
                return None;
            }
            let body = match self.body.take() {
                Some(body) => body,
                None => {
                    let opened = match self.open.take() {
                        Some(open) => open.await.unwrap_or_else(|e| {
                            Err(SourceError::Failed {
                                url: get.url.clone(),
                                why: format!("{}: part {}'s GET ended: {e}", get.key, self.index),
                            })
                        }),
                        None => get.open_retrying(self.index, self.got, self.end).await,
                    };
                    match opened {
                        Ok(body) => body,
                        Err(e) => return Some(Err(e)),
                    }
                }
            };
            let body = self.body.insert(body);
            match get.chunk(body, self.start, self.got, self.end).await {
                Ok(chunk) => {
                    self.got += chunk.len() as u64;
                    return Some(Ok(chunk));
                }
                Err(e) => {
                    self.body = None;
                    self.start = self.got;
                    let wait = self.backoff.next().unwrap_or_default();
                    if wait + retry::LAST_ATTEMPT > get.deadline.remaining() {
                        return Some(Err(e));
                    }
                    tracing::warn!(key = %get.key, part = self.index, "{e}; fetching the rest of the part again in {wait:.1?}");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

/// The fewest parts under way at once: the one handed on and the next.
const MIN_WIDTH: usize = 2;

/// The unpacker's wait for a part below which it is not what the network waited for.
const HARDLY: std::time::Duration = std::time::Duration::from_micros(500);

/// How the parts after the first come, once the first one has ([`mode_after`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The first part is being read and timed; the second downloads meanwhile.
    Deciding,
    /// Several at once, each read ahead on its own task: the network is what the
    /// unpacker waits for, and more connections bring more bytes (S3 serves each one at
    /// about 90 MB/s).
    Parallel,
    /// One after another, each read as the unpacker asks, the next one's GET sent ahead:
    /// this process's CPU is what the bytes wait for, so more connections would bring
    /// only more work (memory to fill and copy, page faults, wakeups).
    InTurn,
}

/// How some parts came: their bytes, the time they took, and how long this process's
/// threads were on a CPU or waiting for one meanwhile ([`Busy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sample {
    bytes: u64,
    wall: std::time::Duration,
    busy: std::time::Duration,
}

impl Sample {
    /// Bytes a second.
    fn rate(&self) -> f64 {
        self.bytes as f64 / self.wall.as_secs_f64().max(1e-9)
    }
}

/// The first part's least length for a sample worth deciding from; below it (a part
/// setting of a few bytes), the parts come in parallel as asked.
const SAMPLE_BYTES: u64 = 256 << 10;

/// The first part's bytes (after its first chunk) the decision waits for, at most: on
/// S3's ~90 MB/s a connection, about 12 ms.
const DECIDE_BYTES: u64 = 1 << 20;

/// How many parts in parallel are timed against the first part alone ([`mode_after_probe`]).
const PROBE_PARTS: u64 = 4;

/// How much faster than the first part alone the parts in parallel must come to go on.
const PAYS: f64 = 1.5;

/// Decides from the first part (its bytes after its first chunk): in turn when this
/// process was busy (on a CPU or waiting for one) at least half of the time the part
/// took: the CPU is then what the bytes wait for. In parallel otherwise: the network is.
fn mode_after_first(first: Sample) -> Mode {
    match first.bytes >= SAMPLE_BYTES && first.busy * 2 >= first.wall {
        true => Mode::InTurn,
        false => Mode::Parallel,
    }
}

/// Decides from the first [`PROBE_PARTS`] parts in parallel: they go on in parallel only
/// when they came at least [`PAYS`] times as fast as the first part alone. More
/// connections bring more bytes where each one is capped (S3, about 90 MB/s each), not
/// where the server or the machine is what is slow (a shared or busy server, many
/// instances on one host): there they bring only more work. Measured on bench-fleet's
/// 177 MB bundle, 50 instances and the server on two cores: parts in parallel took up to
/// 2.4 times one stream's CPU, most of it the kernel's (the page faults of parts read
/// ahead), for no more bytes a second.
fn mode_after_probe(first: Sample, parallel: Sample) -> Mode {
    match parallel.rate() >= PAYS * first.rate() {
        true => Mode::Parallel,
        false => Mode::InTurn,
    }
}

/// The parts of one object, handed on in order. The first part is read as the unpacker
/// asks while the second downloads; how its first [`DECIDE_BYTES`] came decides the rest
/// ([`mode_after_first`], then [`mode_after_probe`]). In parallel, every part may
/// download at once at first, up to `in_flight`; each time the next part is already whole
/// when its turn comes and the unpacker hardly waited for the part before ([`HARDLY`]),
/// one fewer; each time the part being handed on has no bytes ready, the network is what
/// the unpacker waits for, and one more. So a link slower than the unpacker (S3's ~90 MB/s
/// a connection) keeps `in_flight` connections. In turn, one part is read as the unpacker
/// asks while the next one's GET is sent. Bounded memory: at most `in_flight` parts exist
/// (`queue`), each holding at most its range's bytes not yet handed on, so at most
/// `in_flight × part` bytes; a part read in turn holds none.
struct Ranges {
    get: Arc<PartGet>,
    in_flight: usize,
    mode: Mode,
    /// How many parts may be under way at once now: `MIN_WIDTH..=in_flight`.
    width: usize,
    /// How long the unpacker has waited for the part it reads.
    waited: std::time::Duration,
    /// A sample being taken: since when, how busy the process was then, the bytes
    /// handed on since; and the first part's, once it is taken.
    sampling: Option<(std::time::Instant, Busy, u64)>,
    first: Option<Sample>,
    /// Parts handed on in parallel since the first.
    probed: u64,
    /// The next part to start.
    next: u64,
    queue: VecDeque<Part>,
}

impl Ranges {
    fn start(get: Arc<PartGet>, in_flight: usize, first: ByteStream) -> Ranges {
        let part = Inline::new(0, get.layout.range(0), Some(first));
        let mut ranges = Ranges {
            get,
            in_flight: in_flight.max(MIN_WIDTH),
            mode: Mode::Deciding,
            width: MIN_WIDTH,
            waited: std::time::Duration::ZERO,
            sampling: None,
            first: None,
            probed: 0,
            next: 1,
            queue: VecDeque::from([Part::Inline(part)]),
        };
        ranges.top_up();
        ranges
    }

    /// Starts part `next`: read ahead on a task in parallel, else its GET only.
    fn spawn(&mut self) {
        let range = self.get.layout.range(self.next);
        let part = match self.mode {
            // The second part downloads while the first is read and timed: on a slow
            // link the time is not lost, and one part read ahead is within the bound.
            Mode::Deciding | Mode::Parallel => {
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                let task = tokio::spawn(self.get.clone().fetch(self.next, tx));
                let left = range.1 - range.0;
                Part::Ahead(Ahead { rx, task, left })
            }
            Mode::InTurn => {
                let mut part = Inline::new(self.next, range, None);
                let (get, index) = (self.get.clone(), self.next);
                part.open = Some(tokio::spawn(async move {
                    get.open_retrying(index, range.0, range.1).await
                }));
                Part::Inline(part)
            }
        };
        self.queue.push_back(part);
        self.next += 1;
    }

    /// Starts parts until `width` are under way (or none is left).
    fn top_up(&mut self) {
        while self.queue.len() < self.width && self.next < self.get.layout.count() {
            self.spawn();
        }
    }

    async fn next(&mut self) -> Option<Result<Bytes, SourceError>> {
        use tokio::sync::mpsc::error::TryRecvError;
        loop {
            let item = match self.queue.front_mut()? {
                Part::Inline(part) => {
                    let since = std::time::Instant::now();
                    let item = part.next(&self.get).await;
                    self.waited += since.elapsed();
                    item
                }
                Part::Ahead(head) => match head.rx.try_recv() {
                    Ok(item) => Some(item),
                    Err(TryRecvError::Disconnected) => None,
                    Err(TryRecvError::Empty) => {
                        // The unpacker waits for the network: one more part at once.
                        if self.mode == Mode::Parallel {
                            self.width = (self.width + 1).min(self.in_flight);
                            self.top_up();
                        }
                        let since = std::time::Instant::now();
                        // Parts only join the queue at its back: the head is the same.
                        let Some(Part::Ahead(head)) = self.queue.front_mut() else {
                            continue;
                        };
                        let item = head.rx.recv().await;
                        self.waited += since.elapsed();
                        item
                    }
                },
            };
            match item {
                Some(Ok(chunk)) => {
                    if let Part::Ahead(head) = self.queue.front_mut()? {
                        head.left = head.left.saturating_sub(chunk.len() as u64);
                    }
                    match &mut self.sampling {
                        // The first chunk starts the first part's sample: the time to it
                        // is the request's, not the link's.
                        None if self.mode == Mode::Deciding => {
                            self.sampling = Some((std::time::Instant::now(), Busy::now(), 0));
                        }
                        Some((_, _, bytes)) => *bytes += chunk.len() as u64,
                        None => {}
                    }
                    if self.mode == Mode::Deciding
                        && self
                            .sampling
                            .is_some_and(|(_, _, bytes)| bytes >= DECIDE_BYTES)
                    {
                        self.decide();
                    }
                    return Some(Ok(chunk));
                }
                Some(Err(e)) => return Some(Err(e)),
                None if matches!(self.queue.front(), Some(Part::Ahead(head)) if head.left > 0) => {
                    return Some(Err(SourceError::Failed {
                        url: self.get.url.clone(),
                        why: format!("{}: a part's task ended before its last byte", self.get.key),
                    }));
                }
                None => {}
            }
            self.handed_on();
        }
    }

    /// The head part is handed on whole. After the first, and after the first
    /// [`PROBE_PARTS`] in parallel, the mode is decided. In parallel, its room goes to the
    /// next part, or, if that one is already whole, the unpacker is what the network waits
    /// for: one fewer.
    fn handed_on(&mut self) {
        self.queue.pop_front();
        let waited = std::mem::take(&mut self.waited);
        match self.mode {
            Mode::Deciding => self.decide(),
            Mode::Parallel => {
                self.probed += 1;
                if let Some(first) = self.first.filter(|_| self.probed == PROBE_PARTS) {
                    let parallel = self.sample();
                    self.mode = mode_after_probe(first, parallel);
                    match self.mode {
                        Mode::InTurn => {
                            tracing::info!(
                                "{}: the rest in turn, one part at a time: {PROBE_PARTS} parts in parallel came at {:.1} MB/s, the first alone at {:.1} MB/s",
                                self.get.url,
                                parallel.rate() / 1e6,
                                first.rate() / 1e6
                            );
                            self.width = MIN_WIDTH;
                        }
                        _ => {
                            tracing::debug!(url = %self.get.url, ?first, ?parallel, "in parallel still")
                        }
                    }
                }
                // Only when the unpacker has hardly waited for the part before: on a slow
                // link parts started together end together, so the next one can be whole
                // at its turn while the unpacker waited for the network most of the time.
                let whole = matches!(self.queue.front(), Some(Part::Ahead(next)) if next.task.is_finished());
                if self.mode == Mode::Parallel && waited < HARDLY && whole {
                    self.width = (self.width - 1).max(MIN_WIDTH);
                }
            }
            Mode::InTurn => {}
        }
        self.top_up();
    }

    /// Decides from the first part's sample ([`mode_after_first`]); in parallel, every
    /// part may download at once from now on (the unpacker's waits narrow it), and the
    /// first parts in parallel are timed against the first alone.
    fn decide(&mut self) {
        let first = self.sample();
        self.mode = mode_after_first(first);
        match self.mode {
            Mode::InTurn => tracing::info!(
                "{}: the rest in turn, one part at a time: this process was on a CPU or waiting for one {:.0?} of the {:.0?} the first part's first bytes took, so more connections would bring more work, not more bytes",
                self.get.url,
                first.busy,
                first.wall
            ),
            _ => {
                tracing::debug!(url = %self.get.url, ?first, "the rest in parallel");
                self.width = self.in_flight;
                if first.bytes >= SAMPLE_BYTES {
                    self.first = Some(first);
                    self.sampling = Some((std::time::Instant::now(), Busy::now(), 0));
                }
            }
        }
        self.top_up();
    }

    /// Ends the sample being taken (an empty one if none was).
    fn sample(&mut self) -> Sample {
        match self.sampling.take() {
            Some((since, busy, bytes)) => Sample {
                bytes,
                wall: since.elapsed(),
                busy: Busy::now().since(&busy),
            },
            None => Sample {
                bytes: 0,
                wall: std::time::Duration::ZERO,
                busy: std::time::Duration::ZERO,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// Which byte ranges an object of each size comes in, after a first GET that asked for
    /// one part (`first` bytes answered): one request when that covered it; above `above`,
    /// parts of `size`; at most `above`, the rest in one range.
    #[test]
    fn which_ranges_an_object_comes_in() {
        let parts = Parts {
            above: 16 * MIB,
            size: 8 * MIB,
            in_flight: 8,
        };
        let ranges = |size: u64, first: u64| {
            let layout = parts.layout(size, first);
            (0..layout.count())
                .map(|i| layout.range(i))
                .collect::<Vec<_>>()
        };
        // What, the object's size, the bytes the first GET answered, the ranges.
        type Case = (&'static str, u64, u64, Vec<(u64, u64)>);
        let cases: Vec<Case> = vec![
            ("one byte", 1, 1, vec![(0, 1)]),
            ("exactly a part", 8 * MIB, 8 * MIB, vec![(0, 8 * MIB)]),
            (
                "a part and a byte: the rest in one range",
                8 * MIB + 1,
                8 * MIB,
                vec![(0, 8 * MIB), (8 * MIB, 8 * MIB + 1)],
            ),
            (
                "exactly the threshold: the rest in one range",
                16 * MIB,
                8 * MIB,
                vec![(0, 8 * MIB), (8 * MIB, 16 * MIB)],
            ),
            (
                "above the threshold: parts, the last shorter",
                20 * MIB,
                8 * MIB,
                vec![(0, 8 * MIB), (8 * MIB, 16 * MIB), (16 * MIB, 20 * MIB)],
            ),
            (
                "a server that answered less than asked",
                20 * MIB,
                MIB,
                vec![
                    (0, MIB),
                    (MIB, 9 * MIB),
                    (9 * MIB, 17 * MIB),
                    (17 * MIB, 20 * MIB),
                ],
            ),
        ];
        for (what, size, first, expected) in cases {
            assert_eq!(ranges(size, first), expected, "{what}");
        }
        let small = Parts {
            above: 0,
            size: 3,
            in_flight: 2,
        };
        let layout = small.layout(10, 3);
        assert_eq!(
            (0..layout.count())
                .map(|i| layout.range(i))
                .collect::<Vec<_>>(),
            [(0, 3), (3, 6), (6, 9), (9, 10)]
        );
    }

    /// The object's size from the first answer's `Content-Range`, only when it is the
    /// range asked for (from byte 0) and as long as the body.
    #[test]
    fn the_size_in_a_content_range() {
        let cases = [
            ("bytes 0-9/10", 10, Some(10)),
            ("bytes 0-9/100", 10, Some(100)),
            ("bytes 0-9/5", 10, None),
            ("bytes 1-9/100", 9, None),
            ("bytes 0-9/100", 9, None),
            ("bytes 0-9/*", 10, None),
            ("bytes */100", 0, None),
            ("0-9/100", 10, None),
            ("bytes 0-18446744073709551615/100", 0, None),
            // More than the 16 bytes asked for.
            ("bytes 0-99/100", 100, None),
            ("bytes 0-15/100", 16, Some(100)),
        ];
        for (range, length, expected) in cases {
            assert_eq!(total_of(range, length, 16), expected, "{range}");
        }
    }

    /// In parts only with more than one at once: one stream asks for the whole object.
    #[test]
    fn one_in_flight_is_one_stream() {
        let one = Parts {
            in_flight: 1,
            ..Parts::default()
        };
        assert!(!one.ranged());
        assert!(Parts::default().ranged());
    }

    fn sample(bytes: u64, wall_ms: u64, busy_ms: u64) -> Sample {
        Sample {
            bytes,
            wall: std::time::Duration::from_millis(wall_ms),
            busy: std::time::Duration::from_millis(busy_ms),
        }
    }

    /// From the first part: in turn when the process was busy at least half of its time,
    /// and only from a sample of at least [`SAMPLE_BYTES`].
    #[test]
    fn how_the_rest_comes_from_the_first_part() {
        let cases = [
            (
                "S3's ~90 MB/s: the link is slow",
                sample(8 * MIB, 93, 15),
                Mode::Parallel,
            ),
            (
                "loopback: the unpacker is slow",
                sample(8 * MIB, 10, 15),
                Mode::InTurn,
            ),
            ("exactly half busy", sample(8 * MIB, 100, 50), Mode::InTurn),
            ("just under half", sample(8 * MIB, 100, 49), Mode::Parallel),
            (
                "waiting for a CPU counts",
                sample(8 * MIB, 100, 90),
                Mode::InTurn,
            ),
            (
                "too few bytes to tell",
                sample(SAMPLE_BYTES - 1, 1, 5),
                Mode::Parallel,
            ),
            ("just enough", sample(SAMPLE_BYTES, 1, 5), Mode::InTurn),
            ("nothing sampled", sample(0, 0, 0), Mode::Parallel),
        ];
        for (what, first, expected) in cases {
            assert_eq!(mode_after_first(first), expected, "{what}");
        }
    }

    /// After the first parts in parallel: on only when they came at least 1.5 times as
    /// fast as the first alone.
    #[test]
    fn parallel_goes_on_only_where_it_pays() {
        let first = sample(8 * MIB, 100, 10);
        let cases = [
            (
                "about eight connections' worth",
                sample(32 * MIB, 50, 20),
                Mode::Parallel,
            ),
            (
                "a little over 1.5 times",
                sample(12 * MIB, 99, 20),
                Mode::Parallel,
            ),
            ("a little under", sample(12 * MIB, 101, 20), Mode::InTurn),
            (
                "no faster: a busy server",
                sample(32 * MIB, 400, 20),
                Mode::InTurn,
            ),
            ("slower", sample(32 * MIB, 900, 20), Mode::InTurn),
        ];
        for (what, parallel, expected) in cases {
            assert_eq!(mode_after_probe(first, parallel), expected, "{what}");
        }
    }
}
