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
//! hashed in order: in parallel, as many at once as keep the unpacker fed, and in turn
//! when the first parts in parallel came no faster than the first (`ranges.rs`).
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

use std::path::{Path, PathBuf};

use aws_sdk_s3::Client;

use crate::base::retry::Deadline;
use crate::sync::archive::Format;
use crate::sync::fsat;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ChecksumMode;
use aws_smithy_checksums::http::HttpChecksum;
use bytes::Bytes;
use md5::{Digest, Md5};
use std::sync::Arc;
use tokio::io::AsyncReadExt;

use super::ranges::{Layout, PartGet, Ranges};
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
        let first = match self {
            Bundle::S3 {
                client,
                bucket,
                key,
                ..
            } => s3_first(client, bucket, key, known, parts, deadline, &url).await?,
            Bundle::File { path, .. } => open_file(path, known)?,
        };
        let Opened {
            etag,
            size,
            key,
            body,
            check,
        } = match first {
            First::Opened(opened) => *opened,
            First::Fetched(fetched) => return Ok(fetched),
            First::OneStream => {
                let one = Parts {
                    in_flight: 1,
                    ..parts
                };
                return Box::pin(self.fetch(known, sha256, one, deadline)).await;
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

/// What the first answer opened: the version's token, the size, the name errors give,
/// the body, and what verifies it.
struct Opened {
    etag: String,
    size: u64,
    key: String,
    body: Body,
    check: Check,
}

/// What asking the first time came to.
enum First {
    Opened(Box<Opened>),
    /// Unchanged or missing: nothing to download.
    Fetched(Fetched),
    /// Ask again as one stream: an empty object (a range of it is 416), or parts that
    /// cannot be pinned to one version (no ETag).
    OneStream,
}

/// The first GET of an S3 bundle (in parts: of the first part only), and the rest of it
/// started: one stream, or the parts pinned to the answer's ETag.
async fn s3_first(
    client: &Client,
    bucket: &str,
    key: &str,
    known: Option<&str>,
    parts: Parts,
    deadline: Deadline,
    url: &str,
) -> Result<First, SourceError> {
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
                Some(304) => Ok(First::Fetched(Fetched::Unchanged)),
                Some(404) => Ok(First::Fetched(Fetched::Missing)),
                // No byte 0: an empty object, which one GET fetches.
                Some(416) if ranged => Ok(First::OneStream),
                _ => Err(sdk_error(url, "s3:GetObject", e)),
            };
        }
    };
    let etag = match (answer.e_tag(), answer.last_modified()) {
        (Some(etag), _) if !etag.is_empty() => etag.to_string(),
        (_, Some(t)) => Version::Modified(*t).token(),
        _ => {
            return Err(SourceError::Corrupt {
                key: key.into(),
                why: "answered with neither ETag nor Last-Modified".into(),
            });
        }
    };
    let length = match (
        answer.content_length(),
        answer.content_range().and_then(span_of),
    ) {
        (Some(length), _) => length.max(0) as u64,
        // A body sent without Content-Length (chunked, as HTTP allows): a range's length
        // from its Content-Range; a whole object's from a HEAD of the same version, or it
        // cannot be checked.
        (None, Some(span)) => span,
        (None, None) => whole_size(client, bucket, key, answer.e_tag(), url).await?,
    };
    let size = match answer.content_range() {
        Some(range) => total_of(range, length, parts.size).ok_or_else(|| SourceError::Corrupt {
            key: key.into(),
            why: format!(
                "asked for bytes=0-{}, answered {range} for {length} bytes",
                parts.size - 1
            ),
        })?,
        // A 200: the whole object (a server that ignores ranges, or one stream). A 206
        // without its Content-Range breaks HTTP (RFC 9110 §15.3.7); were one to truncate
        // a bundle this way, the archive's own framing (zstd frames, tar headers) ends the
        // unpack with an error, nothing swapped.
        None => length,
    };
    let pinned = answer.e_tag().filter(|e| !e.is_empty()).map(str::to_string);
    let (body, check) = match (length < size, pinned) {
        // The whole object: one stream, its checksum verified by the SDK.
        (false, _) => {
            let check = Check::of(&answer, None);
            (Body::S3(answer.body), check)
        }
        // Without an ETag the parts cannot be pinned to one version.
        (true, None) => return Ok(First::OneStream),
        (true, Some(pinned)) => {
            let get = Arc::new(PartGet {
                client: PartGet::client_of(client),
                bucket: bucket.into(),
                key: key.into(),
                etag: pinned,
                url: url.into(),
                layout: parts.layout(size, length),
                deadline,
            });
            let ranges = Ranges::start(get.clone(), parts.in_flight, answer.body);
            // While the parts download: the full-object checksum.
            let head = get.head().await?;
            (Body::Parts(Box::new(ranges)), Check::of(&head, None))
        }
    };
    Ok(First::Opened(Box::new(Opened {
        etag,
        size,
        key: key.into(),
        body,
        check,
    })))
}

/// A local bundle, opened without following a link: a regular file, its version the
/// stat token ([`stat_token`]).
fn open_file(path: &Path, known: Option<&str>) -> Result<First, SourceError> {
    let local = |source| SourceError::Local {
        path: path.into(),
        source,
    };
    let flags = nix::fcntl::OFlag::O_RDONLY
        | nix::fcntl::OFlag::O_NOFOLLOW
        | nix::fcntl::OFlag::O_NONBLOCK
        | nix::fcntl::OFlag::O_CLOEXEC;
    let fd = match nix::fcntl::open(path, flags, nix::sys::stat::Mode::empty()) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::ENOENT) => return Ok(First::Fetched(Fetched::Missing)),
        Err(e) => return Err(local(fsat::io(e))),
    };
    let st = nix::sys::stat::fstat(&fd).map_err(|e| local(fsat::io(e)))?;
    if !fsat::is_file(&st) {
        return Err(local(std::io::Error::other("not a regular file")));
    }
    let etag = stat_token(&st);
    if known == Some(etag.as_str()) {
        return Ok(First::Fetched(Fetched::Unchanged));
    }
    let file = tokio::fs::File::from_std(std::fs::File::from(fd));
    let check = Check {
        checksum: None,
        value: None,
        md5: None,
    };
    Ok(First::Opened(Box::new(Opened {
        etag,
        size: st.st_size as u64,
        key: path.display().to_string(),
        body: Body::File(file),
        check,
    })))
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

/// The size of an object whose GET answered without Content-Length, from a HEAD pinned
/// to the ETag it answered, if any (a 412 is the change mid-sync it is).
async fn whole_size(
    client: &Client,
    bucket: &str,
    key: &str,
    etag: Option<&str>,
    url: &str,
) -> Result<u64, SourceError> {
    let head = client
        .head_object()
        .bucket(bucket)
        .key(key)
        .set_if_match(etag.filter(|e| !e.is_empty()).map(str::to_string))
        .send()
        .await
        .map_err(|e| match e.raw_response().map(|r| r.status().as_u16()) {
            Some(412) => SourceError::Changed { key: key.into() },
            _ => sdk_error(url, "s3:GetObject", e),
        })?;
    match head.content_length() {
        Some(length) if length >= 0 => Ok(length as u64),
        _ => Err(SourceError::Corrupt {
            key: key.into(),
            why: "answered without Content-Length, its HEAD too: its size cannot be checked".into(),
        }),
    }
}

/// The length of the span a `Content-Range` (`bytes S-E/SIZE`) says: `E - S + 1`.
fn span_of(range: &str) -> Option<u64> {
    let (span, _) = range.strip_prefix("bytes ")?.split_once('/')?;
    let (start, end) = span.split_once('-')?;
    let (start, end) = (start.parse::<u64>().ok()?, end.parse::<u64>().ok()?);
    end.checked_sub(start)?.checked_add(1)
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

    /// A range's length from its `Content-Range`, for a body sent without Content-Length.
    #[test]
    fn the_span_of_a_content_range() {
        let cases = [
            ("bytes 0-8388607/100000000", Some(8388608)),
            ("bytes 5-5/10", Some(1)),
            ("bytes 9-5/10", None),
            ("bytes */10", None),
            ("0-9/10", None),
        ];
        for (range, expected) in cases {
            assert_eq!(span_of(range), expected, "{range}");
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
}
