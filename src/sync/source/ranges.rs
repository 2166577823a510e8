//! A large bundle's byte ranges ([`Layout`]) and how they come ([`Ranges`]): every range
//! after the first a GET pinned with `If-Match` to the first answer's ETag
//! ([`PartGet`]), handed on in order.
//! - **In parallel** at first: each part on its own task, its bytes kept until their
//!   turn, as many at once as keep the unpacker fed, up to `in_flight`. Where each
//!   connection is capped, as on S3 (about 90 MB/s each), this is what brings the bytes.
//! - **In turn** when the first parts in parallel came less than 1.5 times as fast as the
//!   first part ([`mode_after_probe`], a pure function with a table test): the unpacker,
//!   the machine or the server is what the bytes wait for (loopback, a busy instance, a
//!   shared server, many instances on one host), and more connections would bring only
//!   more work. One part at a time is read as the unpacker asks, the next one's GET sent
//!   ahead.
//!
//! Memory: at most `in_flight` parts exist, each holding at most its range's bytes not
//! yet handed on; a part read in turn holds none (its bytes wait in the socket). A part
//! whose GET fails is fetched again on its own, from its first byte not yet received,
//! under the retry policy until the pass's deadline.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use aws_sdk_s3::Client;
use aws_sdk_s3::operation::get_object::GetObjectOutput;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ChecksumMode;
use aws_smithy_types::error::display::DisplayErrorContext;
use bytes::Bytes;

use crate::base::retry::{self, Deadline};

use super::{SourceError, sdk_error};

/// The byte ranges of one object: part 0 is what the first GET answered, the rest follow
/// in parts of `part` bytes (the last one shorter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Layout {
    pub(super) size: u64,
    pub(super) first: u64,
    pub(super) part: u64,
}

impl Layout {
    /// How many GETs the body takes.
    pub(super) fn count(&self) -> u64 {
        1 + (self.size - self.first).div_ceil(self.part)
    }

    /// Part `index`'s bytes, `start..end`.
    pub(super) fn range(&self, index: u64) -> (u64, u64) {
        match index {
            0 => (0, self.first),
            _ => {
                let start = self.first + (index - 1) * self.part;
                (start, (start + self.part).min(self.size))
            }
        }
    }
}

/// What every part's GET shares: the object, pinned to one ETag.
pub(super) struct PartGet {
    /// The pass's client, validating no response checksum ([`PartGet::client_of`]).
    pub(super) client: Client,
    pub(super) bucket: String,
    pub(super) key: String,
    pub(super) etag: String,
    pub(super) url: String,
    pub(super) layout: Layout,
    pub(super) deadline: Deadline,
}

impl PartGet {
    /// `client` for the parts: validating no response checksum (S3 answers none for a
    /// range; the parts' whole is checked in order), built once for a download rather than
    /// a configuration layered onto each GET, which cost every part's request its own
    /// runtime plugins. Its connections are the pass's: the HTTP client is shared.
    pub(super) fn client_of(client: &Client) -> Client {
        let config = client
            .config()
            .to_builder()
            .response_checksum_validation(
                aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired,
            )
            .build();
        Client::from_conf(config)
    }

    /// Sends part `index`'s bytes on `tx` as they arrive: from `first` (the first GET's
    /// body, for part 0), else by ranged GETs; a GET that fails part way is followed by
    /// one of the bytes still missing, retried until the deadline. A failure that is not
    /// retried is sent as the part's last item. Stops when `tx`'s receiver is gone.
    async fn fetch(self: Arc<Self>, index: u64, first: Option<ByteStream>, tx: PartSender) {
        let (start, end) = self.layout.range(index);
        let got = AtomicU64::new(start);
        if let Some(body) = first {
            match self.read(body, &got, end, &tx).await {
                Ok(()) => return,
                Err(SourceError::Failed { why, .. }) => {
                    tracing::warn!(key = %self.key, part = index, "{why}; fetching the rest of the part again");
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            }
        }
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
    pub(super) async fn head(&self) -> Result<GetObjectOutput, SourceError> {
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
        // No checksum mode, and none validated (`client`): S3 answers none for a range,
        // and a server that sent the whole object's would fail the part. The whole object
        // is verified in order.
        let answer = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&self.key)
            .if_match(&self.etag)
            .range(format!("bytes={start}-{}", end - 1))
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
    /// Its bytes not yet handed on, of `len`.
    left: u64,
    len: u64,
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
    fn new(index: u64, (start, end): (u64, u64)) -> Inline {
        Inline {
            index,
            open: None,
            body: None,
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
                    // The handle stays in place while awaited: dropped meanwhile (the
                    // pass ends), the part aborts its GET.
                    let opened = match self.open.as_mut() {
                        Some(open) => {
                            let answer = open.await;
                            self.open = None;
                            answer.unwrap_or_else(|e| {
                                Err(SourceError::Failed {
                                    url: get.url.clone(),
                                    why: format!(
                                        "{}: part {}'s GET ended: {e}",
                                        get.key, self.index
                                    ),
                                })
                            })
                        }
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
                    // As `retry::until_deadline` waits: at most what leaves room for one
                    // more attempt, and none when there is no room.
                    let room = get.deadline.remaining().saturating_sub(retry::LAST_ATTEMPT);
                    if room.is_zero() {
                        return Some(Err(e));
                    }
                    let wait = self.backoff.next().unwrap_or_default().min(room);
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

/// How the parts come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Several at once, each read ahead on its own task: more connections bring more
    /// bytes where each one is capped (S3 serves each at about 90 MB/s).
    Parallel,
    /// One after another, each read as the unpacker asks, the next one's GET sent ahead:
    /// where more connections brought no more bytes (the unpacker, the machine or the
    /// server is what the bytes wait for), only more work (memory to fill and copy, page
    /// faults, wakeups).
    InTurn,
}

/// How some parts came: their bytes and the time they took. The first part's from the
/// unpacker's first wait for it (what came before came at no rate of the link's); the
/// parts after it less the waits for parts of which nothing had come (their requests'
/// latency, which more connections do not add to).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sample {
    bytes: u64,
    wall: std::time::Duration,
}

impl Sample {
    /// Bytes a second.
    fn rate(&self) -> f64 {
        self.bytes as f64 / self.wall.as_secs_f64().max(1e-9)
    }
}

/// The first part's least length for a sample worth timing the others against; below it
/// (a part setting of a few bytes), the parts come in parallel as asked.
const SAMPLE_BYTES: u64 = 256 << 10;

/// How many parts after the first are timed against it ([`mode_after_probe`]).
const PROBE_PARTS: u64 = 4;

/// The most parts at once until the probe has decided ([`Ranges::widest`]).
const PROBE_WIDTH: usize = 4;

/// How much faster than the first part the parts after it must come to go on in parallel.
const PAYS: f64 = 1.5;

/// Decides from the first [`PROBE_PARTS`] parts after the first, which came in parallel:
/// they go on in parallel only when they came at least [`PAYS`] times as fast as the
/// first part, which came mostly alone (the second starts beside it). More connections
/// bring more bytes where each one is capped (S3, about 90 MB/s each), not where the
/// unpacker, the machine or the server is what is slow (loopback, a busy instance, a
/// shared server, many instances on one host): there they bring only more work.
/// Measured on bench-fleet's 177 MB bundle, 50 instances and the server on two cores:
/// parts in parallel took up to 2.4 times one stream's CPU, most of it the kernel's (the
/// page faults of parts read ahead), for no more bytes a second.
fn mode_after_probe(first: Sample, parallel: Sample) -> Mode {
    match parallel.rate() >= PAYS * first.rate() {
        true => Mode::Parallel,
        false => Mode::InTurn,
    }
}

/// The parts of one object, handed on in order, several downloading at once: as many as
/// keep the unpacker fed, up to `in_flight`. Each time the part being handed on has no
/// bytes ready, the network is what the unpacker waits for, and one more part may
/// download at once; each time the next part is already whole when its turn comes and the
/// unpacker hardly waited for the part before ([`HARDLY`]), one fewer. So a link slower
/// than the unpacker (S3's ~90 MB/s a connection) gets `in_flight` connections. Until the
/// probe decides, at most [`PROBE_WIDTH`] at once: the first part is timed from the
/// unpacker's first wait for it (none: nothing is timed, all stay in parallel), then the
/// next [`PROBE_PARTS`] less their requests' latency ([`Sample`]): if they came no faster
/// ([`mode_after_probe`]), the rest come in turn, one part at a time read as the unpacker
/// asks, the next one's GET sent ahead. Bounded memory: at most `in_flight` parts exist
/// (`queue`), each holding at most its range's bytes not yet handed on, so at most
/// `in_flight × part` bytes; a part read in turn holds none.
pub(super) struct Ranges {
    pub(super) get: Arc<PartGet>,
    in_flight: usize,
    mode: Mode,
    /// How many parts may be under way at once now: `MIN_WIDTH..=in_flight`.
    width: usize,
    /// How long the unpacker has waited for the part it reads.
    waited: std::time::Duration,
    /// A sample being taken: since when, and the bytes handed on since; and the first
    /// part's, once it is taken.
    sampling: Option<(std::time::Instant, u64)>,
    first: Option<Sample>,
    /// The unpacker's waits for parts of which nothing had come, during the probe.
    latency: std::time::Duration,
    /// Whether the probe has decided (or there is none to run).
    decided: bool,
    /// The next part to start.
    next: u64,
    queue: VecDeque<Part>,
}

impl Ranges {
    pub(super) fn start(get: Arc<PartGet>, in_flight: usize, first: ByteStream) -> Ranges {
        let mut ranges = Ranges {
            get,
            in_flight: in_flight.max(MIN_WIDTH),
            mode: Mode::Parallel,
            width: MIN_WIDTH,
            waited: std::time::Duration::ZERO,
            sampling: None,
            first: None,
            latency: std::time::Duration::ZERO,
            decided: false,
            next: 0,
            queue: VecDeque::new(),
        };
        ranges.spawn(Some(first));
        ranges.top_up();
        ranges
    }

    /// Starts part `next`: read ahead on its own task in parallel (part 0 from the first
    /// GET's body), else its GET only.
    fn spawn(&mut self, first: Option<ByteStream>) {
        let range = self.get.layout.range(self.next);
        let part = match self.mode {
            Mode::Parallel => {
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                let task = tokio::spawn(self.get.clone().fetch(self.next, first, tx));
                let len = range.1 - range.0;
                Part::Ahead(Ahead {
                    rx,
                    task,
                    left: len,
                    len,
                })
            }
            Mode::InTurn => {
                let mut part = Inline::new(self.next, range);
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
            self.spawn(None);
        }
    }

    pub(super) async fn next(&mut self) -> Option<Result<Bytes, SourceError>> {
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
                            self.width = (self.width + 1).min(self.widest());
                            self.top_up();
                        }
                        // The first part's sample starts at the first wait for its bytes:
                        // what arrived before the unpacker first asked (during the HEAD,
                        // while the unpacker started) came at no rate of the link's.
                        let since = std::time::Instant::now();
                        if self.next_index() == 0 && self.first.is_none() {
                            self.sampling.get_or_insert((since, 0));
                        }
                        // Parts only join the queue at its back: the head is the same.
                        let Some(Part::Ahead(head)) = self.queue.front_mut() else {
                            continue;
                        };
                        // A wait for a part of which nothing has come is its request's
                        // latency (S3's is 100-200 ms): the probe leaves it out.
                        let fresh = head.left == head.len;
                        let item = head.rx.recv().await;
                        self.waited += since.elapsed();
                        if fresh && self.first.is_some() && !self.decided {
                            self.latency += since.elapsed();
                        }
                        item
                    }
                },
            };
            match item {
                Some(Ok(chunk)) => {
                    if let Part::Ahead(head) = self.queue.front_mut()? {
                        head.left = head.left.saturating_sub(chunk.len() as u64);
                    }
                    if let Some((_, bytes)) = &mut self.sampling {
                        *bytes += chunk.len() as u64;
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

    /// The index of the part being handed on.
    fn next_index(&self) -> u64 {
        self.next - self.queue.len() as u64
    }

    /// The head part is handed on whole. After the first, the next [`PROBE_PARTS`] are
    /// timed against it, and the mode decided. In parallel, its room goes to the next
    /// part, or, if that one is already whole, the unpacker is what the network waits
    /// for: one fewer.
    fn handed_on(&mut self) {
        let index = self.next_index();
        self.queue.pop_front();
        let waited = std::mem::take(&mut self.waited);
        if self.mode != Mode::Parallel {
            self.top_up();
            return;
        }
        match (index, self.first) {
            (0, _) => {
                let first = self.sample();
                match first.bytes >= SAMPLE_BYTES {
                    true => {
                        self.first = Some(first);
                        self.latency = std::time::Duration::ZERO;
                        self.sampling = Some((std::time::Instant::now(), 0));
                    }
                    false => self.decided = true,
                }
            }
            (PROBE_PARTS, Some(first)) => {
                self.decided = true;
                let mut parallel = self.sample();
                parallel.wall = parallel.wall.saturating_sub(self.latency);
                self.mode = mode_after_probe(first, parallel);
                match self.mode {
                    Mode::InTurn => {
                        tracing::info!(
                            "{}: the rest in turn, one part at a time: {PROBE_PARTS} parts in parallel came at {:.1} MB/s, the first at {:.1} MB/s",
                            self.get.url,
                            parallel.rate() / 1e6,
                            first.rate() / 1e6
                        );
                        self.width = MIN_WIDTH;
                    }
                    Mode::Parallel => {
                        tracing::debug!(url = %self.get.url, ?first, ?parallel, "in parallel still")
                    }
                }
            }
            _ => {}
        }
        // Only when the unpacker has hardly waited for the part before: on a slow link
        // parts started together end together, so the next one can be whole at its turn
        // while the unpacker waited for the network most of the time.
        let whole =
            matches!(self.queue.front(), Some(Part::Ahead(next)) if next.task.is_finished());
        if self.mode == Mode::Parallel && waited < HARDLY && whole {
            self.width = (self.width - 1).max(MIN_WIDTH);
        }
        self.top_up();
    }

    /// The most parts at once now: [`PROBE_WIDTH`] until the probe has decided (so that
    /// where parallel does not pay, it costs a few parts read ahead, not `in_flight`),
    /// then `in_flight`.
    fn widest(&self) -> usize {
        match self.decided {
            true => self.in_flight,
            false => self.in_flight.min(PROBE_WIDTH),
        }
    }

    /// Ends the sample being taken (an empty one if none was).
    fn sample(&mut self) -> Sample {
        match self.sampling.take() {
            Some((since, bytes)) => Sample {
                bytes,
                wall: since.elapsed(),
            },
            None => Sample {
                bytes: 0,
                wall: std::time::Duration::ZERO,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn sample(bytes: u64, wall_ms: u64) -> Sample {
        Sample {
            bytes,
            wall: std::time::Duration::from_millis(wall_ms),
        }
    }

    /// After the first parts in parallel: on only when they came at least 1.5 times as
    /// fast as the first alone.
    #[test]
    fn parallel_goes_on_only_where_it_pays() {
        let first = sample(8 * MIB, 100);
        let cases = [
            (
                "about eight connections' worth",
                sample(32 * MIB, 50),
                Mode::Parallel,
            ),
            (
                "a little over 1.5 times",
                sample(12 * MIB, 99),
                Mode::Parallel,
            ),
            ("a little under", sample(12 * MIB, 101), Mode::InTurn),
            (
                "no faster: a busy server",
                sample(32 * MIB, 400),
                Mode::InTurn,
            ),
            ("slower", sample(32 * MIB, 900), Mode::InTurn),
        ];
        for (what, parallel, expected) in cases {
            assert_eq!(mode_after_probe(first, parallel), expected, "{what}");
        }
    }
}
