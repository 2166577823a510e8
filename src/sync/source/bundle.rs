//! Bundles ([`Bundle`]): one archive object (or file), fetched with one conditional GET
//! (`If-None-Match: <the ETag unpacked last>`: a 304 costs no body) and verified as an
//! object of a prefix is (`mod.rs`) while it streams, plus an optional pinned SHA-256.
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

use std::path::PathBuf;

use aws_sdk_s3::Client;
use aws_smithy_types::error::display::DisplayErrorContext;

use crate::base::retry::{self, Deadline};
use crate::sync::archive::Format;
use crate::sync::fsat;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ChecksumMode;
use aws_smithy_checksums::http::HttpChecksum;
use bytes::Bytes;
use md5::{Digest, Md5};
use std::collections::VecDeque;
use std::sync::Arc;
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
